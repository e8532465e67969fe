"""DCGAN (Radford et al. 2016): transposed-conv G with BatchNorm, strided-conv D, 32 or 64 px."""

from __future__ import annotations

import torch
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import dcgan_init, hidden_widths, image_shape, log2_int


class Generator(nn.Module):
    """z [B, z_dim] -> img [B, C, R, R] in [-1, 1]; channels halve at each 2x upsampling, or are
    `widths` (one per upsampling layer: a pruned student's)."""

    def __init__(self, z_dim: int, width: int, channels: int, resolution: int, widths: list[int] = ()) -> None:
        super().__init__()
        self.z_dim = z_dim
        n_up = log2_int(resolution) - 2  # 4x4 -> resolution
        chs = hidden_widths(list(widths), [width * 2 ** (n_up - 1 - i) for i in range(n_up)], "dcgan")
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, chs[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(chs[0]),
            nn.ReLU(True),
        ]
        for ch_in, ch_out in zip(chs[:-1], chs[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(ch_in, ch_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch_out),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(chs[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])  # [B, z_dim, 1, 1] -> [B, C, R, R]


class Discriminator(nn.Module):
    """img [B, C*pack, R, R] -> logits [B]; no sigmoid, the loss applies it stably."""

    def __init__(self, width: int, in_channels: int, resolution: int) -> None:
        super().__init__()
        n_down = log2_int(resolution) - 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
        ]
        ch = width
        for _ in range(n_down - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch * 2),
                nn.LeakyReLU(0.2, True),
            ]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img).flatten()


@MODELS.register("dcgan")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    channels, resolution = image_shape(shape, "dcgan", (32, 64))
    G = Generator(cfg.z_dim, cfg.width, channels, resolution, cfg.g_widths)
    D = Discriminator(cfg.width, channels * pack, resolution)
    return G, D
