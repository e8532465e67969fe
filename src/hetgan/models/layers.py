"""Primitives shared by the network families."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from hetgan.errors import ConfigError


def dcgan_init(module: nn.Module) -> None:
    """Weights N(0, 0.02) and BatchNorm scale N(1, 0.02), as in Radford et al. 2016."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class SpectralNorm(_SpectralNorm):
    """torch's spectral norm (Miyato et al. 2018), made safe to compile.

    Each training forward takes one power-iteration step, which updates the u and v buffers.
    torch's version updates them in place. Compiled, that update happens inside the graph, which
    may then save the buffers themselves for backward, and a D called twice before one backward
    (D(real), then D(fake)) fails: "modified by an inplace operation". Here:

    - compiled, the step binds u and v to new tensors, so what an earlier forward saved for its
      backward is left as it was, and the whole layer stays in one graph;
    - eager, or with `in_place` set, the step runs eagerly (outside any compiled graph: one graph
      break per layer) and writes the buffers in place, as torch does. A step captured as a CUDA
      graph needs this: its replays read and write the tensors it captured, so u and v must stay
      the same tensors (the trainer sets `in_place` under accel.cuda_graphs; set it too for
      torch.compile's own CUDA graphs, mode="reduce-overhead", which reuse their output memory).

    Either way it computes torch's numbers (eager: to the bit), with torch's state_dict keys.
    """

    in_place = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        global _power_iteration_eagerly
        if _power_iteration_eagerly is None:
            _power_iteration_eagerly = torch.compiler.disable(_power_iteration_in_place)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return super().forward(weight)
        weight_mat = self._reshape_weight_to_matrix(weight)  # [out, in * k * k]
        if not self.training:
            u, v = self._u.clone(), self._v.clone()
        elif torch.compiler.is_compiling() and not self.in_place:
            u, v = self._iterate(weight_mat, self._u, self._v)
            self._u, self._v = u, v  # new tensors: the buffers an earlier graph saved stay unchanged
        else:
            u, v = _power_iteration_eagerly(self, weight_mat)
        sigma = torch.vdot(u, torch.mv(weight_mat, v))
        return weight / sigma

    @torch.no_grad()
    def _iterate(self, weight_mat: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """torch's power-iteration step (one per forward), from u and v to new u and v."""
        for _ in range(self.n_power_iterations):
            u = F.normalize(torch.mv(weight_mat, v), dim=0, eps=self.eps)
            v = F.normalize(torch.mv(weight_mat.H, u), dim=0, eps=self.eps)
        return u, v


@torch.no_grad()
def _power_iteration_in_place(norm: SpectralNorm, weight_mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`norm._iterate` with its buffers updated in place."""
    u, v = norm._iterate(weight_mat, norm._u, norm._v)
    norm._u.copy_(u)
    norm._v.copy_(v)
    return u, v


# `_power_iteration_in_place` run outside any compiled graph (torch.compiler.disable), made when
# the first SpectralNorm is: making it imports torch._dynamo (over a second), which a command that
# builds no spectral norm (`hetgan sample`, `eval`, `--help`) need not wait for.
_power_iteration_eagerly = None


def update_in_place(model: nn.Module) -> nn.Module:
    """Set `in_place` on every SpectralNorm in `model` (see SpectralNorm): for a step that is
    captured as a CUDA graph, whose replays must advance the same u and v tensors."""
    for module in model.modules():
        if isinstance(module, SpectralNorm):
            module.in_place = True
    return model


def spectral_norm(module: nn.Conv2d | nn.Linear) -> nn.Module:
    """`module` with its weight divided by its spectral norm (one power iteration per forward in
    training), as torch.nn.utils.parametrizations.spectral_norm does, but safe to compile."""
    parametrize.register_parametrization(module, "weight", SpectralNorm(module.weight, n_power_iterations=1, dim=0))
    return module


def image_shape(shape: tuple[int, ...], family: str, resolutions: tuple[int, ...]) -> tuple[int, int]:
    """Check a [C, H, W] sample shape against what a conv family supports; returns (C, R)."""
    if len(shape) != 3:
        raise ConfigError(
            f"model {family!r} generates images but the data is {shape}-shaped points; "
            "use --set model.arch=mlp or model.arch=maxout for 2-D data"
        )
    channels, height, width = shape
    if height != width or height not in resolutions:
        raise ConfigError(
            f"model {family!r} supports resolutions {list(resolutions)}, got {height}x{width}; "
            f"pass --set data.resolution={resolutions[0]}"
        )
    return channels, height


def log2_int(n: int) -> int:
    return int(round(math.log2(n)))


def batch_coupled(net: nn.Module) -> list[str]:
    """The layers of `net` (as "name (Type)") whose output for one sample depends on what else
    goes through the same forward: BatchNorm in training mode normalises by the batch's statistics,
    and spectral norm runs a step of power iteration on each forward, so one forward over a joint
    batch computes something else than two forwards over its halves."""
    found = []
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            found.append(f"{name} ({type(m).__name__}: the batch's statistics)")
        elif parametrize.is_parametrized(m) and any(
            isinstance(p, _SpectralNorm) for plist in m.parametrizations.values() for p in plist
        ):
            found.append(f"{name} (spectral norm: a power-iteration step per forward)")
    return found


def hidden_widths(given: list[int], default: list[int], family: str) -> list[int]:
    """G's hidden widths: `given` (model.g_widths) where set, else the family's `default`; a
    ConfigError if `given` has another number of layers than the family builds."""
    if not given:
        return default
    if len(given) != len(default):
        raise ConfigError(
            f"model.g_widths has {len(given)} widths but this {family} G has {len(default)} ({default} at "
            f"model.width); give one per layer, or [] for the family's own"
        )
    return list(given)


# --- class conditioning (model.conditional) --------------------------------------------------
class TakesLabels:
    """Marks a layer whose forward is `(x, y)`: y [B] int64 class indices (or None when the network
    is unconditional). `LabelledSequential` hands y to these layers and x alone to the others."""


class LabelledSequential(nn.Sequential):
    """`nn.Sequential` whose forward also takes the class labels y [B] and passes them to the layers
    that take them (`TakesLabels`); the layer list, its indices and state_dict keys stay Sequential's."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = norm(layer, x, y)
        return x


def labelled(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """`net(x, y)` for a conditional network, `net(x)` for the others: an unconditional network's
    layer list may have been split into device stages (placement.StagedSequential), which take x alone."""
    return net(x) if y is None else net(x, y)


class ConditionalBatchNorm2d(TakesLabels, nn.Module):
    """BatchNorm whose scale and shift are looked up by class (de Vries et al. 2017; the G of
    Miyato & Koyama 2018): normalise without affine parameters, then x * gamma[y] + beta[y].
    gamma starts at 1 and beta at 0, so at initialisation it is plain BatchNorm for every class."""

    def __init__(self, num_features: int, n_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gamma = nn.Embedding(n_classes, num_features)
        self.beta = nn.Embedding(n_classes, num_features)
        nn.init.ones_(self.gamma.weight)
        nn.init.zeros_(self.beta.weight)

    @property
    def num_features(self) -> int:
        return self.bn.num_features

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.gamma(y), self.beta(y)  # [B, C] each
        return self.bn(x) * gamma[:, :, None, None] + beta[:, :, None, None]


def batch_norm(num_features: int, n_classes: int) -> nn.Module:
    """BatchNorm2d, or its class-conditional form where the network is conditional (n_classes > 0)."""
    return ConditionalBatchNorm2d(num_features, n_classes) if n_classes else nn.BatchNorm2d(num_features)


def norm(layer: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """`layer(x)`, with y for a layer that takes labels (`TakesLabels`: a conditional BatchNorm)."""
    return layer(x, y) if isinstance(layer, TakesLabels) else layer(x)


class Projection(nn.Module):
    """The class term of a projection discriminator (Miyato & Koyama 2018): <embed(y), phi(x)>, added
    to the unconditional logit, with phi(x) [B, C] D's pooled features."""

    def __init__(self, n_classes: int, features: int, spectral: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_classes, features)
        nn.init.normal_(self.embed.weight, 0.0, 0.02)
        if spectral:
            parametrize.register_parametrization(
                self.embed, "weight", SpectralNorm(self.embed.weight, n_power_iterations=1, dim=0)
            )

    def forward(self, phi: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (self.embed(y) * phi).sum(1)  # [B]


def check_labels(y: torch.Tensor | None, n_classes: int, who: str) -> None:
    """A conditional network needs y; an unconditional one takes none (internal contract: the
    trainer, SeededGenerator and the exporters pass y exactly when model.conditional is set)."""
    if n_classes and y is None:
        raise ValueError(f"this {who} is class-conditional: pass the labels y [B] as well")
    if not n_classes and y is not None:
        raise ValueError(f"this {who} is unconditional: it takes no labels")


LABEL_DIM = 32  # width of the class embedding a flat (mlp, maxout) network appends to its input


class ConcatLabels(TakesLabels, nn.Module):
    """x [B, F] -> [B, F + LABEL_DIM]: x with a learned embedding of its class appended, the
    conditioning of the flat networks (Mirza & Osindero 2014 concatenate a one-hot y)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_classes, LABEL_DIM)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.flatten(1), self.embed(y).to(x.dtype)], 1)


def label_input(n_classes: int) -> tuple[list[nn.Module], int]:
    """The layers that open a flat network's layer list and the features they add: [ConcatLabels]
    and LABEL_DIM when conditional, nothing when not."""
    return ([ConcatLabels(n_classes)], LABEL_DIM) if n_classes else ([], 0)


def with_labels(net, y: torch.Tensor | None):
    """`net` (a D), or with the labels y [B] bound so that the losses call it on images alone: y is
    repeated for a batch that holds several of y's batches (a joint real + fake forward of D)."""
    if y is None:
        return net

    def D_with_labels(x: torch.Tensor) -> torch.Tensor:
        return net(x, y if len(x) == len(y) else y.repeat(len(x) // len(y)))

    return D_with_labels
