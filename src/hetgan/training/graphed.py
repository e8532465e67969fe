"""The whole training step as one CUDA graph (`accel.cuda_graphs`).

At small batches a GAN step on a GPU is bound by the host, not the GPU: a DCGAN-32 step at batch
64 launches hundreds of kernels of a few microseconds each, and the GPU waits on Python between
them. Capturing the step once and replaying it launches them all in one call.

What is captured: G's forward, the D phases and the G phase with their backward passes, both
optimiser steps (fused Adam, which skips a non-finite step on the device), the EMA update and the
step's losses. What stays outside, since it changes from step to step on the host: the real batch
and z (drawn as usual, then copied into the graph's input buffers), the learning rates and the EMA
rate (device tensors the graph reads, filled before each replay). Random draws inside the loss
(DiffAugment, WGAN-GP's interpolation) come from the run's generator, registered with the graph so
that each replay draws fresh numbers.

The first `WARMUP_STEPS` steps run eagerly on a side stream (cuDNN picks its algorithms, the
optimisers create their state), the next is captured, and every step from then on is a replay.
Loading a checkpoint drops the graph: the optimiser state it read is replaced. Spectral norm (the
resnet D) updates its power-iteration vectors in place here, so each replay advances the vectors
the graph captured (see hetgan.models.layers.SpectralNorm).
"""

from __future__ import annotations

import torch

from hetgan.errors import ConfigError
from hetgan.models.layers import update_in_place
from hetgan.training.step import StepResult

WARMUP_STEPS = 3


def check_graphable(trainer) -> torch.device:
    """The one CUDA device the captured step runs on; a ConfigError naming the setting to change
    where the step cannot be captured whole."""
    accel = trainer.cfg.accel
    devices = set()
    for name, net in (("G", trainer.G), ("D", trainer.D)):
        off = sorted({str(p.device) for p in net.parameters() if p.device.type != "cuda"})
        if off:
            raise ConfigError(
                f"accel.cuda_graphs needs a CUDA device, but {name} has parameters on {', '.join(off)}; "
                "drop the setting or place G and D (and all their stages) on CUDA"
            )
        devices |= {p.device for p in net.parameters()}
    if len(devices) > 1:
        names = ", ".join(sorted(map(str, devices)))
        raise ConfigError(
            f"accel.cuda_graphs captures the step on one GPU, but G and D are on {names}; "
            "drop the setting or place both networks on the same GPU"
        )
    if accel.optimizer_impl != "fused":
        raise ConfigError(
            "accel.cuda_graphs needs accel.optimizer_impl=fused: the optimiser step is captured with the rest, "
            "and fused Adam is the one that skips a non-finite step on the device; add --set accel.optimizer_impl=fused"
        )
    if "fp16" in (trainer.g_precision, trainer.d_precision):
        raise ConfigError(
            "accel.cuda_graphs does not work with accel.precision=fp16: its loss scaler decides on the host; "
            "use accel.precision=bf16 (no loss scaling) or fp32"
        )
    return devices.pop()


class StepGraph:
    """Runs a trainer's steps as replays of one captured step (see the module's doc)."""

    def __init__(self, trainer) -> None:
        self.trainer = trainer
        self.device = check_graphable(trainer)
        update_in_place(trainer.D)  # spectral norm's u and v: replays advance the captured tensors
        self.random_loss = bool(trainer.loss.augment) or trainer.cfg.loss.name == "wgan-gp"
        if self.random_loss and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
            raise ConfigError(
                "accel.cuda_graphs with random draws in the loss (loss.augment or wgan-gp) needs a torch whose "
                "CUDA graphs can replay a generator (CUDAGraph.register_generator_state); drop one of the two"
            )
        self.eager_steps = 0
        self.capturing = False  # the trainer's EMA reads `ema_rate` while the step is captured
        self.graph: torch.cuda.CUDAGraph | None = None
        self.ema_rate = torch.zeros((), device=self.device)  # filled before each replay
        self.inputs: list[tuple] = []  # (real, z, None): a captured step is unconditional
        self.keys: list[str] = []  # the step's losses, in the order of `packed`
        self.phases: list[str] = []  # the phases whose non-finite flags follow them in `packed`
        self.packed: torch.Tensor | None = None

    def reset(self) -> None:
        """Capture again at the next step (after the optimiser state or the RNG was replaced)."""
        self.graph = self.packed = None
        self.eager_steps = 0

    def run(self, inputs: list[tuple], result: StepResult) -> None:
        """One step on these (real, z, None) inputs, one per D phase, its losses and flags into result."""
        t = self.trainer
        if self.graph is None and self.eager_steps < WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                t.iterate(result, inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.eager_steps += 1
            return
        if self.graph is None:
            self._capture(inputs)
        self.ema_rate.fill_(t.ema_rate())
        for (real, z, _), (new_real, new_z, _) in zip(self.inputs, inputs, strict=True):
            real.copy_(new_real, non_blocking=True)
            z.copy_(new_z, non_blocking=True)
        self.graph.replay()
        values = self.packed.clone()  # the next replay overwrites `packed`
        result.losses.update(zip(self.keys, values[: len(self.keys)], strict=True))
        result.nonfinite.update(zip(self.phases, values[len(self.keys) :] > 0, strict=True))

    def _capture(self, inputs: list[tuple]) -> None:
        t = self.trainer
        for opt in (t.opt_G, t.opt_D):
            for group in opt.param_groups:  # read from device tensors that are set before each replay
                group["capturable"] = True
                if not torch.is_tensor(group["lr"]):
                    group["lr"] = torch.tensor(float(group["lr"]), device=self.device)
            opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients it writes
        self.inputs = [(real.clone(), z.clone(), None) for real, z, _ in inputs]
        self.graph = torch.cuda.CUDAGraph()
        if self.random_loss:
            self.graph.register_generator_state(t.rng)
        static = StepResult()
        torch.cuda.synchronize(self.device)
        self.capturing = True
        try:
            with torch.cuda.graph(self.graph):
                t.iterate(static, self.inputs)
                self.keys = [k for k, v in static.losses.items() if torch.is_tensor(v)]
                self.phases = list(static.nonfinite)
                self.packed = torch.stack(
                    [static.losses[k].float() for k in self.keys] + [static.nonfinite[p].float() for p in self.phases]
                )
        except Exception:
            self.graph = self.packed = None
            raise
        finally:
            self.capturing = False
