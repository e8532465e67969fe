"""Fully connected G and D (Goodfellow et al. 2014 layout), for flat images or 2-D points."""

from __future__ import annotations

import math

import torch
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import hidden_widths


class FlatGenerator(nn.Module):
    """Hidden layers from z, then a linear output reshaped to `shape` ([C, H, W] or [2]).

    Images end in tanh (range [-1, 1]); points are unbounded, so the last layer stays linear.
    """

    def __init__(self, z_dim: int, shape: tuple[int, ...], hidden: list[nn.Module], hidden_width: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.shape = shape
        layers = [*hidden, nn.Linear(hidden_width, math.prod(shape))]
        if len(shape) == 3:
            layers.append(nn.Tanh())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)  # not len(z): exporters would fix the batch size


def hidden_layers(widths: list[int]) -> list[nn.Module]:
    """Linear + LeakyReLU(0.2) from each width to the next: [in, h1, h2] -> two hidden layers."""
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(n_in, n_out), nn.LeakyReLU(0.2, True)]
    return layers


class Generator(FlatGenerator):
    """z [B, z_dim] -> sample [B, *shape]: hidden widths w, 2w, 4w (Goodfellow et al.), or `depth`
    layers of w each, with LeakyReLU(0.2).

    Depth is what lets G switch steeply from one mode of a 2-D mixture to the next: at the same
    training budget six layers of 256 put far fewer samples on the bridges between modes than
    256-512-1024; eight were unstable (benchmarks/RESULTS.md).
    """

    def __init__(self, z_dim: int, width: int, shape: tuple[int, ...], depth: int = 0, widths: list[int] = ()) -> None:
        hidden = hidden_widths(list(widths), [width] * depth if depth else [width, width * 2, width * 4], "mlp")
        super().__init__(z_dim, shape, hidden_layers([z_dim, *hidden]), hidden[-1])


class Discriminator(nn.Module):
    """sample [B, pack * prod(shape)] (any trailing shape) -> logits [B]: hidden widths 2w, w (or
    2w followed by `depth - 1` layers of w) with LeakyReLU(0.2)."""

    def __init__(self, width: int, in_features: int, depth: int = 2) -> None:
        super().__init__()
        widths = [in_features, width * 2, *([width] * (depth - 1))]
        self.net = nn.Sequential(*hidden_layers(widths), nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1)).flatten()


@MODELS.register("mlp")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    G = Generator(cfg.z_dim, cfg.width, shape, cfg.g_depth, cfg.g_widths)
    D = Discriminator(cfg.width, math.prod(shape) * pack, cfg.d_depth or 2)
    return G, D
