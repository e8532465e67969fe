"""Where work runs: device names, G and D on different devices, and a network split into
contiguous stages on different devices (e.g. conv layers on the GPU, the dense head on the CPU).

Stage spec, one per network: comma-separated `FIRST-LAST@DEVICE` ranges over the indices of the
network's layer list (`net` in every model family; `hetgan layers` lists them),
LAST may be left open:

    "0-8@cuda:0,9-@cpu"     layers 0..8 on cuda:0, layers 9..end on the CPU

Tensors move between stages with `.to()`, which autograd differentiates, so gradients flow back
across devices and the split network computes exactly what the unsplit one does.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from hetgan.errors import ConfigError

STAGE_RE = re.compile(r"^(\d+)-(\d*)@(.+)$")


def resolve_device(name: str, field: str = "") -> torch.device:
    """'auto' picks CUDA, then MPS, then XPU, then the CPU; other names must be available. A
    ConfigError names `field` (the config field or option the name came from) where given."""
    device = None if name == "auto" else device_from_name(name, field)
    if device is not None and device.type == "cpu":
        return device
    names = available_devices()
    kinds = [n.split(":")[0] for n in names]
    if device is None:
        return torch.device(next((kind for kind in ("cuda", "mps", "xpu") if kind in kinds), "cpu"))
    if device.type not in kinds or (device.type == "cuda" and f"cuda:{device.index or 0}" not in names):
        raise ConfigError(
            f"{located(field)}device {name!r} is not available on this machine "
            f"(available: {', '.join(names)}); use one of those, or auto"
        )
    return device


def available_devices() -> list[str]:
    """The devices this process can use, by the names the device options take."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        names.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        names.append("xpu")
    return names


def located(field: str) -> str:
    """The prefix that says where a bad value came from: 'accel.d_stages: ', or nothing."""
    return f"{field}: " if field else ""


def device_from_name(name: str, field: str = "") -> torch.device:
    """A device name checked for form only (cpu, cuda, cuda:N, mps, xpu), not for availability."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps", "xpu"):
        raise ConfigError(f"{located(field)}unknown device {name!r}; use auto, cpu, cuda, cuda:N, mps or xpu")
    return device


def parse_stages(
    spec: str, n_layers: int, available_only: bool = True, field: str = ""
) -> list[tuple[int, int, torch.device]]:
    """'0-8@cuda,9-@cpu' -> [(0, 9, cuda), (9, n_layers, cpu)]: contiguous, covering every layer.
    With available_only=False the devices are checked for form only (to plan a split elsewhere).
    Errors name `field` (accel.g_stages or accel.d_stages) where given."""
    stages, expected_start, where = [], 0, located(field)
    for part in spec.split(","):
        m = STAGE_RE.match(part.strip())
        if not m:
            raise ConfigError(f"{where}stage {part!r} in {spec!r}: expected FIRST-LAST@DEVICE, e.g. 0-8@cuda,9-@cpu")
        first, last = int(m.group(1)), int(m.group(2)) if m.group(2) else n_layers - 1
        problem = stage_problem(first, last, expected_start, n_layers)
        if problem:
            raise ConfigError(
                f"{where}stage {part!r} in {spec!r} {problem}; the stages must cover layers 0..{n_layers - 1} "
                f"in order without gaps or overlaps (`hetgan layers` with the same --preset/--set lists them)"
            )
        at = f"{field} stage {part!r}" if field else f"stage {part!r}"
        device = resolve_device(m.group(3), at) if available_only else device_from_name(m.group(3), at)
        stages.append((first, last + 1, device))
        expected_start = last + 1
    if expected_start != n_layers:
        raise ConfigError(
            f"{where}stages {spec!r} stop at layer {expected_start - 1} "
            f"but the network's last layer is {n_layers - 1}; "
            f"end the last stage open, e.g. '{expected_start}-@cpu'"
        )
    return stages


def stage_problem(first: int, last: int, expected_start: int, n_layers: int) -> str:
    """What is wrong with the stage FIRST-LAST coming after layer expected_start - 1, or ''."""
    if first >= n_layers or last >= n_layers:
        return f"names layer {max(first, last)}, but the network has only layers 0..{n_layers - 1}"
    if last < first:
        return f"ends at layer {last}, before its first layer {first}"
    if first > expected_start:
        return f"starts at layer {first}, leaving layers {expected_start}..{first - 1} on no device"
    if first < expected_start:
        return f"starts at layer {first}, but layers up to {expected_start - 1} are already placed"
    return ""


class StagedSequential(nn.Sequential):
    """An nn.Sequential cut into contiguous stages, each on its own device.

    It keeps the layers and their indices, so its state_dict is the unsplit network's and
    checkpoints move freely between placements.
    """

    def __init__(self, layers: nn.Sequential, spec: str, field: str = "") -> None:
        stages = parse_stages(spec, len(layers), field=field)
        super().__init__(*[layers[i].to(device) for start, stop, device in stages for i in range(start, stop)])
        self.spec = spec
        self.stages = [(start, stop) for start, stop, _ in stages]
        self.devices = [device for _, _, device in stages]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for (start, stop), device in zip(self.stages, self.devices, strict=True):
            x = x.to(device)
            for i in range(start, stop):
                x = self[i](x)
        return x


def qualname(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__name__}"


def layer_list(model: nn.Module, who: str = "") -> nn.Sequential:
    """`model.net`, the layer list a stage spec splits; a ConfigError naming `who` (by default the
    model's class) where there is none."""
    layers = getattr(model, "net", None)
    if not isinstance(layers, nn.Sequential):
        raise ConfigError(
            f"{who or qualname(model)} has no `net` layer list to split; stage specs work for every "
            "hetgan model family (dcgan, mlp, maxout, resnet), and a network of your own needs its layers "
            "in an nn.Sequential named `net`: drop the stage spec, or pick a family with --set model.arch=..."
        )
    return layers


def split_network(model: nn.Module, spec: str, field: str = "") -> nn.Module:
    """Replace `model.net` with a StagedSequential following `spec` (errors name `field`)."""
    who = f"{field} is set, but {qualname(model)}" if field else ""
    model.net = StagedSequential(layer_list(model, who), spec, field)
    return model


def input_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device a network's input must be on: its first stage's, or `default`."""
    net = getattr(model, "net", None)
    return net.devices[0] if isinstance(net, StagedSequential) else default


def output_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device a network's output comes out on: its last stage's, or `default`."""
    net = getattr(model, "net", None)
    return net.devices[-1] if isinstance(net, StagedSequential) else default
