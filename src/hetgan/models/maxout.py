"""The synthetic-data networks of VEEGAN and PacGAN (Srivastava et al. 2017; Lin et al. 2018):
G has four BatchNorm-ReLU hidden layers, D has three maxout layers and no normalisation.

Maxout units let D draw sharp, piecewise-linear boundaries around tight modes, and BatchNorm in G
lets it map a Gaussian z onto well-separated clusters; the plain `mlp` family spreads samples
between the modes of ring8 and grid25 instead.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import LabelledSequential, check_labels, hidden_widths, label_input, labelled
from hetgan.models.mlp import FlatGenerator

N_PIECES = 5
INIT_STD = 0.02


class Maxout(nn.Module):
    """Linear map to `n_out * pieces` units, then the max over each group of `pieces`."""

    def __init__(self, n_in: int, n_out: int, pieces: int = N_PIECES) -> None:
        super().__init__()
        self.n_out, self.pieces = n_out, pieces
        self.linear = nn.Linear(n_in, n_out * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], self.n_out, self.pieces).amax(dim=-1)


class Generator(FlatGenerator):
    """z [B, z_dim] (and y [B] when conditional) -> sample [B, *shape]: four hidden layers of
    `width` units (Linear, BN, ReLU)."""

    def __init__(
        self, z_dim: int, width: int, shape: tuple[int, ...], widths: list[int] = (), n_classes: int = 0
    ) -> None:
        layers: list[nn.Module] = []
        n_in = z_dim + label_input(n_classes)[1]
        for n_out in hidden_widths(list(widths), [width] * 4, "maxout"):
            layers += [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU(True)]
            n_in = n_out
        super().__init__(z_dim, shape, layers, n_in, n_classes)
        _init(self)


class Discriminator(nn.Module):
    """sample [B, pack * prod(shape)] (any trailing shape; and y [B] when conditional) -> logits
    [B]: three maxout layers."""

    def __init__(self, width: int, in_features: int, n_classes: int = 0) -> None:
        super().__init__()
        self.n_classes = n_classes
        first, n_label = label_input(n_classes)
        self.net = LabelledSequential(
            *first,
            Maxout(in_features + n_label, width),
            Maxout(width, width),
            Maxout(width, width),
            nn.Linear(width, 1),
        )
        _init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "D")
        return labelled(self.net, x.flatten(1), y).flatten()


def _init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


@MODELS.register("maxout")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    """`model.width` is G's hidden width; D's maxout layers have half as many units."""
    G = Generator(cfg.z_dim, cfg.width, shape, cfg.g_widths, cfg.n_classes)
    D = Discriminator(max(cfg.width // 2, 1), math.prod(shape) * pack, cfg.n_classes)
    return G, D
