"""SNGAN-style ResNet G and D at 32 px (Miyato et al. 2018, CIFAR-10 architecture).

G: linear -> 4x4, three upsampling residual blocks, BN-ReLU-conv -> tanh.
D: an optimized first block, three more residual blocks (two downsampling), global sum pooling
and a linear head, every weight spectrally normalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import image_shape


class GBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.bn1, self.bn2 = nn.BatchNorm2d(ch), nn.BatchNorm2d(ch)
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2)
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + F.interpolate(x, scale_factor=2)


class DBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = spectral_norm(nn.Conv2d(ch_in, ch_out, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(ch_out, ch_out, 3, 1, 1))
        learn_skip = ch_in != ch_out or down
        self.skip = spectral_norm(nn.Conv2d(ch_in, ch_out, 1)) if learn_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)  # the first block sees raw pixels
        h = self.conv2(F.relu(self.conv1(h)))
        s = x
        if self.first:
            s = self.skip(F.avg_pool2d(s, 2))  # pool before the 1x1 conv, as SNGAN does
        elif self.skip is not None:
            s = self.skip(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return (F.avg_pool2d(h, 2) if self.down else h) + s


class Generator(nn.Module):
    """z [B, z_dim] -> img [B, C, 32, 32] in [-1, 1]; `ch` channels throughout."""

    def __init__(self, z_dim: int, ch: int, channels: int) -> None:
        super().__init__()
        self.z_dim, self.ch = z_dim, ch
        self.linear = nn.Linear(z_dim, 4 * 4 * ch)
        self.blocks = nn.Sequential(GBlock(ch), GBlock(ch), GBlock(ch))
        self.out = nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU(), nn.Conv2d(ch, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.linear(z).view(len(z), self.ch, 4, 4)  # [B, ch, 4, 4]
        return self.out(self.blocks(h))


class Discriminator(nn.Module):
    """img [B, C*pack, 32, 32] -> logits [B]."""

    def __init__(self, ch: int, in_channels: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            DBlock(in_channels, ch, down=True, first=True),
            DBlock(ch, ch, down=True),
            DBlock(ch, ch, down=False),
            DBlock(ch, ch, down=False),
        )
        self.head = spectral_norm(nn.Linear(ch, 1))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.blocks(img)).sum(dim=(2, 3))  # global sum pooling -> [B, ch]
        return self.head(h).flatten()


@MODELS.register("resnet")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    channels, _ = image_shape(shape, "resnet", (32,))
    G = Generator(cfg.z_dim, cfg.width * 2, channels)
    D = Discriminator(cfg.width, channels * pack)
    return G, D
