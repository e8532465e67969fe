"""SNGAN-style ResNet G and D at 32 px (Miyato et al. 2018, CIFAR-10 architecture).

G: linear -> 4x4, three upsampling residual blocks, BN-ReLU-conv -> tanh.
D: an optimized first block, three more residual blocks (two downsampling), global sum pooling
and a linear head, every weight spectrally normalised.

Each network is one layer list, `net`, with a residual block as one layer, so a stage spec can put
the blocks on one device and the rest on another (`hetgan layers --preset resnet_cifar10`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import hidden_widths, image_shape, spectral_norm


class GBlock(nn.Module):
    """Residual upsampling block on a stream of `ch` channels, `inner` channels between its convs."""

    def __init__(self, ch: int, inner: int | None = None) -> None:
        super().__init__()
        inner = inner or ch
        self.bn1, self.bn2 = nn.BatchNorm2d(ch), nn.BatchNorm2d(inner)
        self.conv1 = nn.Conv2d(ch, inner, 3, 1, 1)
        self.conv2 = nn.Conv2d(inner, ch, 3, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.conv1.in_channels}, up=2"

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

    def extra_repr(self) -> str:
        return f"{self.conv1.in_channels}, {self.conv1.out_channels}, down={self.down}, first={self.first}"

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


class GlobalSumPool(nn.Module):
    """[B, C, H, W] -> [B, C]: the sum over positions (SNGAN's D pools by summing, not averaging)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))


class Generator(nn.Module):
    """z [B, z_dim] -> img [B, C, 32, 32] in [-1, 1]; `ch` channels throughout, or `widths`: [the
    residual stream's channels, each block's inner channels] (a pruned student's)."""

    def __init__(self, z_dim: int, ch: int, channels: int, widths: list[int] = ()) -> None:
        super().__init__()
        self.z_dim = z_dim
        ch, *inner = hidden_widths(list(widths), [ch] * 4, "resnet")
        self.net = nn.Sequential(
            nn.Linear(z_dim, 4 * 4 * ch),
            nn.Unflatten(1, (ch, 4, 4)),  # [B, 16 ch] -> [B, ch, 4, 4]
            *(GBlock(ch, n) for n in inner),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.Conv2d(ch, channels, 3, 1, 1),
            nn.Tanh(),
        )
        self.register_load_state_dict_pre_hook(rename_keys({"linear.": "net.0.", "blocks.": 2, "out.": 5}))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Discriminator(nn.Module):
    """img [B, C*pack, 32, 32] -> logits [B]."""

    def __init__(self, ch: int, in_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            DBlock(in_channels, ch, down=True, first=True),
            DBlock(ch, ch, down=True),
            DBlock(ch, ch, down=False),
            DBlock(ch, ch, down=False),
            nn.ReLU(),
            GlobalSumPool(),  # [B, ch, 8, 8] -> [B, ch]
            spectral_norm(nn.Linear(ch, 1)),
        )
        self.register_load_state_dict_pre_hook(rename_keys({"blocks.": 0, "head.": "net.6."}))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img).flatten()  # [B, 1] -> [B]


def rename_keys(renames: dict[str, str | int]):
    """A load_state_dict pre-hook that reads checkpoints and artifacts written before the resnet
    networks became one layer list (hetgan up to its thirteenth session kept their parts apart:
    `linear`, `blocks`, `out`, `head`). An old prefix maps to a new one, or to the offset of an old
    numbered Sequential inside `net` ("blocks.1." -> "net.3." for offset 2). The layers kept their
    order, so optimiser states, which follow parameter order, load as they are."""

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix) :]
            old = next((old for old in renames if local.startswith(old)), None)
            if old is None:
                continue
            target, rest = renames[old], local[len(old) :]
            if isinstance(target, int):  # "1.conv1.weight" -> "net.{1 + offset}.conv1.weight"
                index, _, rest = rest.partition(".")
                target = f"net.{int(index) + target}."
            state_dict[prefix + target + rest] = state_dict.pop(key)

    return hook


@MODELS.register("resnet")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    channels, _ = image_shape(shape, "resnet", (32,))
    G = Generator(cfg.z_dim, cfg.width * 2, channels, cfg.g_widths)
    D = Discriminator(cfg.width, channels * pack)
    return G, D
