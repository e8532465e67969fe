"""Fully connected G and D (Goodfellow et al. 2014 layout), for flat images or 2-D points."""

from __future__ import annotations

import math

import torch
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import LabelledSequential, check_labels, hidden_widths, label_input, labelled


class FlatGenerator(nn.Module):
    """Hidden layers from z (with a class embedding appended when `n_classes`: the hidden layers
    then take z_dim + LABEL_DIM features), then a linear output reshaped to `shape` ([C, H, W] or [2]).

    Images end in tanh (range [-1, 1]); points are unbounded, so the last layer stays linear.
    """

    def __init__(
        self, z_dim: int, shape: tuple[int, ...], hidden: list[nn.Module], hidden_width: int, n_classes: int = 0
    ) -> None:
        super().__init__()
        self.z_dim, self.shape, self.n_classes = z_dim, shape, n_classes
        layers = [*label_input(n_classes)[0], *hidden, nn.Linear(hidden_width, math.prod(shape))]
        if len(shape) == 3:
            layers.append(nn.Tanh())
        self.net = LabelledSequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "G")
        return labelled(self.net, z, y).view(z.shape[0], *self.shape)  # not len(z): exporters would fix the batch size


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
    256-512-1024; eight were unstable (benchmarks/RESULTS.md, "2-D mixtures").
    """

    def __init__(
        self,
        z_dim: int,
        width: int,
        shape: tuple[int, ...],
        depth: int = 0,
        widths: list[int] = (),
        n_classes: int = 0,
    ) -> None:
        hidden = hidden_widths(list(widths), [width] * depth if depth else [width, width * 2, width * 4], "mlp")
        n_in = z_dim + label_input(n_classes)[1]
        super().__init__(z_dim, shape, hidden_layers([n_in, *hidden]), hidden[-1], n_classes)


class Discriminator(nn.Module):
    """sample [B, pack * prod(shape)] (any trailing shape; and y [B] when conditional, whose
    embedding is appended) -> logits [B]: hidden widths 2w, w (or 2w followed by `depth - 1`
    layers of w) with LeakyReLU(0.2)."""

    def __init__(self, width: int, in_features: int, depth: int = 2, n_classes: int = 0) -> None:
        super().__init__()
        self.n_classes = n_classes
        first, n_label = label_input(n_classes)
        widths = [in_features + n_label, width * 2, *([width] * (depth - 1))]
        self.net = LabelledSequential(*first, *hidden_layers(widths), nn.Linear(widths[-1], 1))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "D")
        return labelled(self.net, x.flatten(1), y).flatten()


@MODELS.register("mlp")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    G = Generator(cfg.z_dim, cfg.width, shape, cfg.g_depth, cfg.g_widths, cfg.n_classes)
    D = Discriminator(cfg.width, math.prod(shape) * pack, cfg.d_depth or 2, cfg.n_classes)
    return G, D
