"""DCGAN (Radford et al. 2016): transposed-conv G with BatchNorm, strided-conv D, 32 to 256 px.

Conditional (model.conditional): G's BatchNorms take their scale and shift from the class
(conditional BatchNorm), and D adds a projection term to its logit (Miyato & Koyama 2018).
"""

from __future__ import annotations

import torch
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import (
    LabelledSequential,
    Projection,
    batch_norm,
    check_labels,
    dcgan_init,
    hidden_widths,
    image_shape,
    labelled,
    log2_int,
)

RESOLUTIONS = (32, 64, 128, 256)
MAX_CHANNELS_FACTOR = 8  # the widest layer has at most 8 * width channels (64 px: 8w, 4w, 2w, w)


def g_channels(width: int, n_up: int) -> list[int]:
    """Channels of G's upsampling layers, from 4x4 on: halving at each 2x, the narrowest `width`.
    At 128 and 256 px the widest layers are capped at 8 * width, as DCGAN's 64 px layout has them."""
    return [width * min(2 ** (n_up - 1 - i), MAX_CHANNELS_FACTOR) for i in range(n_up)]


class Generator(nn.Module):
    """z [B, z_dim] (and y [B] class indices when conditional) -> img [B, C, R, R] in [-1, 1];
    channels halve at each 2x upsampling, or are `widths` (one per upsampling layer: a pruned
    student's)."""

    def __init__(
        self, z_dim: int, width: int, channels: int, resolution: int, widths: list[int] = (), n_classes: int = 0
    ) -> None:
        super().__init__()
        self.z_dim, self.n_classes = z_dim, n_classes
        n_up = log2_int(resolution) - 2  # 4x4 -> resolution
        chs = hidden_widths(list(widths), g_channels(width, n_up), "dcgan")
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, chs[0], 4, 1, 0, bias=False),
            batch_norm(chs[0], n_classes),
            nn.ReLU(True),
        ]
        for ch_in, ch_out in zip(chs[:-1], chs[1:], strict=True):
            layers += [
                nn.ConvTranspose2d(ch_in, ch_out, 4, 2, 1, bias=False),
                batch_norm(ch_out, n_classes),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(chs[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = LabelledSequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "dcgan G")
        return labelled(self.net, z[:, :, None, None], y)  # [B, z_dim, 1, 1] -> [B, C, R, R]


class Discriminator(nn.Module):
    """img [B, C*pack, R, R] (and y [B] when conditional) -> logits [B]; no sigmoid, the loss
    applies it stably."""

    def __init__(self, width: int, in_channels: int, resolution: int, n_classes: int = 0) -> None:
        super().__init__()
        self.n_classes = n_classes
        n_down = log2_int(resolution) - 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, True),
        ]
        ch = width
        for _ in range(n_down - 1):
            ch_out = min(ch * 2, width * MAX_CHANNELS_FACTOR)
            layers += [
                nn.Conv2d(ch, ch_out, 4, 2, 1, bias=False),
                nn.BatchNorm2d(ch_out),
                nn.LeakyReLU(0.2, True),
            ]
            ch = ch_out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 0, bias=False))  # 4x4 -> 1x1
        self.net = nn.Sequential(*layers)
        self.projection = Projection(n_classes, ch) if n_classes else None
        dcgan_init(self)

    def forward(self, img: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "dcgan D")
        if self.projection is None:
            return self.net(img).flatten()
        h = self.net[:-1](img)  # [B, ch, 4, 4]
        return self.net[-1](h).flatten() + self.projection(h.sum((2, 3)), y)


@MODELS.register("dcgan")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    channels, resolution = image_shape(shape, "dcgan", RESOLUTIONS)
    G = Generator(cfg.z_dim, cfg.width, channels, resolution, cfg.g_widths, cfg.n_classes)
    D = Discriminator(cfg.width, channels * pack, resolution, cfg.n_classes)
    return G, D
