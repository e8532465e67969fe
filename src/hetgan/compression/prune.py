"""Structured pruning of a generator: whole channels and units removed over the network's
dependency graph (torch-pruning), so that the result is a smaller dense network that runs faster
on every runtime, with z and the output layer as they were.

A transposed convolution's output channels are coupled to its BatchNorm and to the next layer's
input channels; a resnet block's residual stream to every block, the final BatchNorm and the
output layer. torch-pruning finds these groups and removes a channel from all of a group at once.
The resnet's stream starts at a Linear unflattened to 4x4 maps, which the dependency graph does not
follow, so for the resnet only the channels inside each block are pruned.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hetgan.config import TrainConfig
from hetgan.errors import ConfigError, HetganError

IMPORTANCE = ("magnitude", "bn_scale")
ROUND_TO = 8  # widths in multiples of 8: what vectorised CPU kernels and tensor cores run best on


def torch_pruning():
    try:
        import torch_pruning as tp
    except ImportError:
        raise HetganError(
            "structured pruning needs the torch-pruning package: pip install 'hetgan[compress]' "
            "(or pip install torch-pruning)"
        ) from None
    return tp


def weight_layers(G: nn.Module) -> list[nn.Module]:
    return [m for m in G.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)]


def widths_of(G: nn.Module, arch: str) -> list[int]:
    """G's hidden widths as `model.g_widths` states them for its family."""
    if arch == "resnet":
        blocks = [m for m in G.modules() if hasattr(m, "conv1") and hasattr(m, "bn1")]
        return [blocks[0].bn1.num_features, *(b.conv1.out_channels for b in blocks)]
    layers = weight_layers(G)[:-1]  # all but the output layer
    return [m.out_channels if isinstance(m, nn.ConvTranspose2d | nn.Conv2d) else m.out_features for m in layers]


def example_inputs(G: nn.Module, z_dim: int, batch: int) -> tuple[torch.Tensor, ...]:
    """(z,) or, for a conditional G, (z, y): zeros [batch, z_dim] and classes 0, 1, ... [batch]."""
    device = next(G.parameters()).device
    z = torch.zeros(batch, z_dim, device=device)
    n_classes = getattr(G, "n_classes", 0)
    return (z, torch.arange(batch, device=device) % n_classes) if n_classes else (z,)


def macs(G: nn.Module, z_dim: int) -> int:
    """Multiply-accumulates of one sample through G (torch-pruning's counter)."""
    tp = torch_pruning()
    was_training = G.training
    G.eval()
    ops, _ = tp.utils.count_ops_and_params(G, example_inputs(G, z_dim, 1))
    G.train(was_training)
    return int(ops)


def check_ratio(ratio: float) -> float:
    if not 0 < ratio < 1:
        raise ConfigError(
            f"--prune {ratio}: the share of channels to remove must be between 0 and 1 (exclusive), e.g. 0.5"
        )
    return ratio


def ratio_for_width(cfg: TrainConfig, width: int) -> float:
    """The prune ratio that brings the teacher's `model.width` to `width`."""
    teacher = cfg.model.width
    if not 0 < width < teacher:
        raise ConfigError(
            f"--width {width}: a student is narrower than its teacher (model.width {teacher}); "
            f"pass a width between 1 and {teacher - 1}"
        )
    return 1 - width / teacher


def prune_generator(G: nn.Module, cfg: TrainConfig, ratio: float, importance: str = "magnitude") -> nn.Module:
    """A pruned copy of G: `ratio` of the channels of every prunable group removed, chosen by
    `importance` ("magnitude": the L2 norm of a channel's weights; "bn_scale": the |gamma| of its
    BatchNorm, as Network Slimming ranks them). The copy's widths are `widths_of(copy, arch)`."""
    tp = torch_pruning()
    check_ratio(ratio)
    if importance not in IMPORTANCE:
        raise ConfigError(f"--importance {importance!r}: choose one of {', '.join(IMPORTANCE)}")
    student = copy.deepcopy(G).eval()
    if importance == "bn_scale" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in student.modules()):
        raise ConfigError(
            f"--importance bn_scale ranks channels by BatchNorm, which this {cfg.model.arch} G lacks; use magnitude"
        )
    scorer = tp.importance.BNScaleImportance() if importance == "bn_scale" else tp.importance.MagnitudeImportance(p=2)
    layers = weight_layers(student)
    ignored = [layers[-1]]  # the output layer keeps its channels: the image's
    if cfg.model.arch == "resnet":
        ignored.append(layers[0])  # the stream's Linear (see the module's docstring)
    example = example_inputs(student, cfg.model.z_dim, 2)
    # Multiples of 8 where that is a fine step (layers of 64 and more); narrower ones keep exact
    # widths (a width-32 layer rounded to 8 at ratio 0.55 became 8 channels: too coarse).
    round_to = ROUND_TO if min(widths_of(student, cfg.model.arch)) >= 8 * ROUND_TO else None
    pruner = tp.pruner.MetaPruner(
        student, example, importance=scorer, pruning_ratio=ratio, ignored_layers=ignored, round_to=round_to
    )
    pruner.step()
    return student
