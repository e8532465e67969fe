"""Acceleration knobs, all set from `AccelConfig`: mixed precision (autocast + GradScaler),
torch.compile and CUDA graphs, channels_last, TF32, cudnn.benchmark, optimiser implementation and
CPU threads. Knobs that change numerics are off by default.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable

import torch
from torch import nn

from hetgan.config import AccelConfig, LossConfig
from hetgan.errors import ConfigError

log = logging.getLogger("hetgan")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def apply_backend_flags(cfg: AccelConfig) -> None:
    """Process-wide switches (torch keeps these globally), set both ways: torch's own default lets
    cuDNN convolutions use TF32, so `tf32: false` must switch it off, not leave it."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark


@contextlib.contextmanager
def restored_backend_flags():
    """Undo apply_backend_flags on exit, so one tuning candidate's threads or TF32 setting does
    not leak into the next."""
    saved = (
        torch.get_num_threads(),
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    )
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1], saved[2]
        torch.backends.cudnn.benchmark = saved[3]


@contextlib.contextmanager
def without_tf32():
    """Full fp32 matrix products and convolutions inside, whatever a run's `tf32` knob or torch's
    default says: evaluation features must not depend on them. Only the two TF32 flags are saved
    and put back: evaluation enters it once per batch of 256 samples."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def autocast(precision: str, device_types: Iterable[str], cache: bool = True) -> contextlib.AbstractContextManager:
    """Autocast on every device type a network runs on; a no-op for fp32. `cache` False for code
    captured in a CUDA graph, which must not keep the cast weights between replays."""
    if precision == "fp32":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for device_type in sorted(set(device_types)):
        stack.enter_context(torch.autocast(device_type=device_type, dtype=DTYPES[precision], cache_enabled=cache))
    return stack


def has_gradient_penalty(loss: LossConfig) -> bool:
    return loss.name == "wgan-gp" or loss.r1_gamma > 0


def d_precision(cfg: AccelConfig, loss: LossConfig) -> str:
    """fp16 gradient penalties underflow in their double backward: D then stays in fp32."""
    if cfg.precision == "fp16" and has_gradient_penalty(loss):
        log.info("fp16 with a gradient penalty: D runs in fp32, G in fp16")
        return "fp32"
    return cfg.precision


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling; bf16 has fp32's range and does not. `device`: `loss_scale_device`."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


def loss_scale_device(net: nn.Module, name: str) -> torch.device:
    """Where a network's fp16 loss scaling runs: on its parameters' device, to which its loss is
    moved before it is scaled (G's loss is D's output, on D's device).

    GradScaler copies its scale to each gradient's device, and each device's overflow flag back to
    the scale's, without waiting. A copy from an accelerator to the host that is not waited for may
    be read before it has landed, so the scale must not sit on the CPU while gradients are on an
    accelerator, nor the reverse; a network with parameters on both cannot use loss scaling."""
    devices = list(dict.fromkeys(p.device for p in net.parameters()))
    if len({d.type == "cpu" for d in devices}) > 1:
        raise ConfigError(
            f"accel.precision=fp16 cannot scale the loss of {name}, whose stages are on "
            f"{', '.join(map(str, devices))}: the loss scaler would read a GPU's overflow flag on the "
            "host before it has landed; use accel.precision=bf16 (which needs no loss scaling), or "
            f"keep {name}'s stages all on accelerators or all on the CPU"
        )
    return devices[0]


def make_optimizer(params, lr: float, betas: tuple[float, float], impl: str) -> torch.optim.Adam:
    kwargs = {"foreach": {"foreach": True}, "fused": {"fused": True}}.get(impl, {})
    return torch.optim.Adam(params, lr=lr, betas=betas, **kwargs)


def compiled(G: nn.Module, D: nn.Module, cfg: AccelConfig, loss: LossConfig):
    """Forward callables for G and D: compiled where asked and sound, else the modules themselves.

    The double backward of R1 and WGAN-GP is not supported under torch.compile, so with a
    gradient penalty D stays eager (G is still compiled). CUDA graphs (`cuda_graphs`) are not
    torch.compile's: the trainer captures its whole step (hetgan.training.graphed).
    """
    if not cfg.compile:
        return G, D
    # Each trainer compiles its own G and D from the same code; torch's default of 8 compiled
    # versions per function is reached by the third compiled trainer of a process (tune builds
    # several), after which it runs eager without a word.
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 64)
    G_fwd = torch.compile(G)
    if has_gradient_penalty(loss):
        log.info("torch.compile: D stays eager (its gradient penalty needs a double backward)")
        return G_fwd, D
    return G_fwd, torch.compile(D)


def to_channels_last(module: nn.Module) -> nn.Module:
    return module.to(memory_format=torch.channels_last)
