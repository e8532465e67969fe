"""`hetgan layers`: G's and D's layer lists with the indices that stage specs
(`accel.g_stages`, `accel.d_stages`) use, and what each cut point would cost.

For each layer of a network's `net`: its output shape for one sample, its parameters, its forward
FLOPs per sample, and the activation a cut after it would move between devices (forward, and its
gradient back) per sample. A good split puts the heavy layers on the fast device and cuts where
the activation is small.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch
from torch import nn

from hetgan.benchmarking.training import FlopCount
from hetgan.config import TrainConfig
from hetgan.losses import pack
from hetgan.models import build_models, sample_shape
from hetgan.placement import layer_list, parse_stages, qualname


@dataclass
class LayerRow:
    index: int
    layer: str  # type and arguments, e.g. "Conv2d(64, 128, kernel_size=4, stride=2, ...)"
    out_shape: tuple[int, ...]  # one sample's output
    params: int
    flops: int  # forward, per sample
    cut_bytes: int  # the fp32 output, per sample: what a stage boundary after this layer moves


def describe(layer: nn.Module, width: int = 60) -> str:
    """The layer as torch prints it, with uniform tuples collapsed and cut at an argument boundary
    to fit `width`: Conv2d(1, 32, kernel_size=4, stride=2, ...)."""
    args = re.sub(r"\((\d+)(?:, \1)+\)", r"\1", layer.extra_repr())  # (4, 4) -> 4
    text = f"{type(layer).__name__}({args})"
    if len(text) <= width:
        return text
    return text[: text.rfind(", ", 0, width - 5)] + ", ...)"


def si(n: float) -> str:
    """1234567 -> '1.23M'."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


@torch.no_grad()
def layer_table(model: nn.Module, x: torch.Tensor) -> list[LayerRow] | None:
    """Rows for model.net's layers as model(x) runs them (x: one sample, [1, ...]); None when the
    model has no `net` layer list (it cannot be split into stages)."""
    net = getattr(model, "net", None)
    if not isinstance(net, nn.Sequential):
        return None
    rows: list[LayerRow] = []
    counter = FlopCount()
    start = {}

    def before(layer, args):
        start[layer] = counter.total

    def after(layer, args, out):
        params = sum(p.numel() for p in layer.parameters())
        flops = counter.total - start[layer]
        rows.append(LayerRow(len(rows), describe(layer), tuple(out.shape[1:]), params, flops, 4 * out[0].numel()))

    hooks = [h for layer in net for h in (layer.register_forward_pre_hook(before), layer.register_forward_hook(after))]
    try:
        with counter:
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return rows


def network_tables(cfg: TrainConfig) -> dict[str, tuple[str, list[LayerRow] | None, str]]:
    """{"G": (class name, rows, stage spec), "D": ...} for the config's networks, built on the CPU;
    a ConfigError where a stage spec is given for a network that cannot be split."""
    G, D = build_models(cfg)
    fake = torch.zeros(cfg.loss.pack, *sample_shape(cfg))  # D judges `pack` samples at once
    tables = {}
    for name, model, x, spec in (
        ("G", G, torch.zeros(1, cfg.model.z_dim), cfg.accel.g_stages),
        ("D", D, pack(fake, cfg.loss.pack), cfg.accel.d_stages),
    ):
        if spec:
            layer_list(model, f"accel.{name.lower()}_stages is set, but {name} ({qualname(model)})")
        tables[name] = (qualname(model), layer_table(model, x), spec)
    return tables


def format_layers(name: str, model_type: str, rows: list[LayerRow] | None, spec: str = "", batch: int = 1) -> str:
    """The table; with a stage spec, each layer's device and what crosses each boundary per step."""
    if rows is None:
        return f"{name} ({model_type}): no `net` layer list, so it cannot be split into stages"
    stages = parse_stages(spec, len(rows), available_only=False, field=f"accel.{name.lower()}_stages") if spec else []
    device = {i: str(dev) for start, stop, dev in stages for i in range(start, stop)}
    lines = [
        f"{name} ({model_type}): {len(rows)} layers, stage spec indices 0..{len(rows) - 1}",
        f"  {'#':>3}  {'layer':<60}  {'output':<14}  {'params':>9}  {'FLOPs':>7}  {'cut KB':>7}"
        + ("  device" if stages else ""),
    ]
    for r in rows:
        shape = "x".join(map(str, r.out_shape))
        lines.append(
            f"  {r.index:>3}  {r.layer:<60}  {shape:<14}  {r.params:>9,}  {si(r.flops):>7}  {r.cut_bytes / 1024:>7.1f}"
            + (f"  {device[r.index]}" if stages else "")
        )
    lines.append(
        "  FLOPs: forward matrix products and convolutions, per sample (torch.utils.flop_counter).\n"
        "  cut KB: fp32 activation per sample moved each way if a stage ends after this layer."
    )
    for (_, stop, before), (_, _, after) in itertools.pairwise(stages):
        moved = rows[stop - 1].cut_bytes
        lines.append(
            f"  accel.{name.lower()}_stages {spec!r}: after layer {stop - 1}, {before} -> {after}: "
            f"{moved / 1024:.1f} KB per sample, {moved * batch / 2**20:.2f} MiB per batch of {batch}, each way"
        )
    return "\n".join(lines)


def layers(cfg: TrainConfig | None = None) -> str:
    """G's and D's layers with the indices that stage specs (`accel.g_stages`) use, their output
    shapes, parameters, FLOPs and the activation a cut after each would move (`hetgan layers`).
    `cfg` is the run whose networks to list (default `TrainConfig()`).

    Example:
        >>> print(hetgan.layers(hetgan.get_preset("dcgan_mnist")))
    """
    cfg = cfg if cfg is not None else TrainConfig()
    tables = network_tables(cfg)  # refuses a stage spec for a network that cannot be split
    batch = cfg.train.batch_size
    text = "\n\n".join(format_layers(name, *table, batch=batch) for name, table in tables.items())
    splittable = [name for name, (_, rows, spec) in tables.items() if rows is not None and not spec]
    if splittable:
        example = f"--set accel.{splittable[-1].lower()}_stages=FIRST-LAST@DEVICE,NEXT-@DEVICE"
        text += f"\n\nsplit with e.g. {example} (docs: Acceleration and placement)"
    return text
