"""The training state and one training iteration.

`Trainer` holds everything a step reads or writes (G, D, G_ema, optimisers, RNGs, data position,
counters) and turns it into checkpoint tensors + JSON and back. `Trainer.step()` schedules the
phases: `n_critic` D steps, then one G step that reuses the last D step's generator forward.

A phase whose loss is non-finite is skipped (no weight, optimiser or EMA update). With fused Adam
that decision is taken on the device (the optimiser's `found_inf`, as GradScaler uses it), so a
step never waits for the device: losses stay tensors until they are logged, and the non-finite
count is taken when it is read, at most every `COUNT_EVERY` steps.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math

import torch
from torch import nn

from hetgan.accel import (
    apply_backend_flags,
    autocast,
    compiled,
    d_precision,
    grad_scaler,
    loss_scale_device,
    make_optimizer,
    to_channels_last,
)
from hetgan.artifact import recalibrated_for
from hetgan.config import OptimConfig, TrainConfig, to_dict
from hetgan.data import load_data, make_sampler, with_classes
from hetgan.data.clusters import self_conditioned
from hetgan.data.sampler import PrefetchSampler
from hetgan.data.sources import Data
from hetgan.errors import CheckpointError, ConfigError, TrainingDiverged
from hetgan.losses import build_loss
from hetgan.models import build_models
from hetgan.models.layers import batch_coupled, with_labels
from hetgan.placement import input_device, output_device, resolve_device, split_network
from hetgan.training.checkpoint import flatten_optimizer, restore_optimizer
from hetgan.training.distill import load_student_start, objective
from hetgan.training.distributed import Distributed
from hetgan.training.graphed import StepGraph
from hetgan.training.step import StepResult
from hetgan.version import __version__

log = logging.getLogger("hetgan")

COUNT_EVERY = 256  # steps whose non-finite flags may wait on the device before they are counted


def flag_needs_host(flag_device: torch.device, readers: set[torch.device]) -> bool:
    """Whether a phase's skip flag, computed on `flag_device`, must be read on the host instead
    of being left on the device: when it sits on an accelerator and a reader (the optimiser or the
    EMA of a network with a stage on the CPU) is on the CPU. Fused Adam and the EMA copy the flag
    to each parameter's device without waiting, and a copy from an accelerator to the host that is
    not waited for may be read before it has landed."""
    return flag_device.type != "cpu" and any(d.type == "cpu" for d in readers)


def lr_scale(optim: OptimConfig, kimg: float) -> float:
    """Factor on the base learning rates after `kimg` thousand real images (optim.lr_decay)."""
    if optim.lr_decay == "none" or kimg <= optim.decay_start_kimg:
        return 1.0
    t = min(1.0, (kimg - optim.decay_start_kimg) / (optim.decay_end_kimg - optim.decay_start_kimg))
    shape = 1.0 - t if optim.lr_decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * t))
    return optim.lr_final_scale + (1.0 - optim.lr_final_scale) * shape


def joint_batch(cfg: TrainConfig, D: nn.Module) -> bool:
    """Whether D judges real and fake in one forward (`accel.batch_layout`); refused for a D with
    layers that couple the samples of a forward, where it would change what D computes."""
    if cfg.accel.batch_layout != "joint":
        return False
    coupled = batch_coupled(D)
    if coupled:
        raise ConfigError(
            f"accel.batch_layout=joint judges real and fake images in one forward of D, but this D "
            f"({cfg.model.arch}) has {'; '.join(coupled[:2])}{'; ...' if len(coupled) > 2 else ''}, so one "
            "forward over both would compute something else than two; keep accel.batch_layout=separate "
            "(the default), or use a D without such layers (mlp, maxout)"
        )
    return True


class Trainer:
    """With `dist` (a process group, see distributed.py), one data-parallel rank of a run: the
    same state as every other rank, computing on its part of each global batch."""

    def __init__(self, cfg: TrainConfig, data: Data | None = None, dist: Distributed | None = None) -> None:
        self.cfg = cfg.validate()  # a config built in Python gets the checks `--set` gets
        self.dist = dist or Distributed()
        accel = cfg.accel
        apply_backend_flags(accel)
        device = self._device
        self.device = device(accel.device, "accel.device")
        self.g_device = device(accel.g_device, "accel.g_device") if accel.g_device else self.device
        self.d_device = device(accel.d_device, "accel.d_device") if accel.d_device else self.device
        self._refuse_cuda_graphs_of(cfg)
        self.dist.shard.local_batch(cfg.train.batch_size, cfg.loss.pack)  # a clear error if it does not split
        torch.manual_seed(cfg.seed)  # model init: the same weights on every rank
        self.data = data if data is not None else load_data(cfg.data)
        if cfg.data.clusters:  # a self-conditioned GAN: the data's k-means clusters are its labels
            self.data = self_conditioned(self.data, cfg.data.clusters, cfg.seed)
        self.cfg = cfg = with_classes(cfg, self.data)  # a conditional run's n_classes and class names
        self.G, self.D = self._place(*build_models(cfg))
        load_student_start(cfg, self.G, self.D)  # a distilled student (hetgan compress): its pruned teacher
        self.g_device_types = {p.device.type for p in self.G.parameters()}  # autocast on each of these
        self.d_device_types = {p.device.type for p in self.D.parameters()}
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)  # plain BatchNorm: rank 0 samples it alone
        self.G, self.D = (
            self.dist.sync_batch_norm(self.G, accel.sync_batchnorm),
            self.dist.sync_batch_norm(self.D, accel.sync_batchnorm),
        )
        betas = (cfg.optim.beta1, cfg.optim.beta2)
        self.opt_G = make_optimizer(self.G.parameters(), cfg.optim.g_lr, betas, accel.optimizer_impl)
        self.opt_D = make_optimizer(self.D.parameters(), cfg.optim.d_lr, betas, accel.optimizer_impl)
        self.z_device = input_device(self.G, self.g_device)
        self.rng = torch.Generator(self.z_device).manual_seed(cfg.seed + 1)
        shard = self.dist.shard
        gan_loss = build_loss(cfg.loss, self.rng, joint=joint_batch(cfg, self.D), shard=shard)
        self.loss = objective(cfg, gan_loss, output_device(self.G, self.g_device))  # + distillation, if set
        self.data_device = input_device(self.D, self.d_device)  # where real batches live
        self.sampler = make_sampler(
            self.data,
            cfg.seed,
            self.data_device,
            cfg.data.loader,
            cfg.data.resident_max_mb,
            shard,
            cfg.model.conditional,
        )
        self.G_fwd, self.D_fwd = compiled(self.G, self.D, accel, cfg.loss)
        self.g_precision, self.d_precision = accel.precision, d_precision(accel, cfg.loss)
        self.graph = StepGraph(self) if accel.cuda_graphs else None  # the step captured whole
        self._make_scalers()
        # Fused Adam can skip a step on a device-side flag: then no phase waits for the device.
        self.skip_on_device = accel.optimizer_impl == "fused"
        self._group_ema_parameters()
        self.timer = None  # a PhaseTimer while benchmarking (hetgan.benchmarking)
        self.step_count, self.nimg = 0, 0  # steps taken; real images its D phases saw, all ranks'
        self.saved_step = -1  # step of the newest committed checkpoint
        self.nonfinite_in_row = 0
        self.nonfinite_total = 0
        self._uncounted: list[tuple[int, StepResult]] = []  # steps not yet counted by count_skipped()
        self._recalibrated: nn.Module | None = None  # G_ema recalibrated at this step; dropped by the next

    def _make_scalers(self) -> None:
        """fp16 loss scaling on each network's own device (its loss is moved there to be scaled)."""
        self.scale_device = {
            name: loss_scale_device(net, name.upper()) if precision == "fp16" else None
            for name, net, precision in (("g", self.G, self.g_precision), ("d", self.D, self.d_precision))
        }
        self.scaler_G = grad_scaler(self.g_precision, self.scale_device["g"])
        self.scaler_D = grad_scaler(self.d_precision, self.scale_device["d"])

    def _group_ema_parameters(self) -> None:
        """G_ema's and G's parameters by device (G's stages may sit on several), for the EMA update
        with a device-side flag, grouped once, here, not on every step; and where each phase's flag
        is read: its optimiser's parameters (and, for G, the EMA's)."""
        self.ema_groups: dict[torch.device, tuple[list[nn.Parameter], list[nn.Parameter]]] = {}
        for ema_p, p in zip(self.G_ema.parameters(), self.G.parameters(), strict=True):
            ema_list, g_list = self.ema_groups.setdefault(p.device, ([], []))
            ema_list.append(ema_p)
            g_list.append(p)
        self.flag_readers = {"D": {p.device for p in self.D.parameters()}, "G": set(self.ema_groups)}

    def _refuse_cuda_graphs_of(self, cfg: TrainConfig) -> None:
        """The steps a captured CUDA graph cannot hold (conditional and ADA ones: TrainConfig.validate)."""
        if self.dist.active and cfg.accel.cuda_graphs:
            raise ConfigError(
                "accel.cuda_graphs captures one process's whole step, which cannot hold the gradient "
                "all-reduce of data-parallel training; drop --set accel.cuda_graphs=true under torchrun"
            )

    def _device(self, name: str, field: str) -> torch.device:
        return self.dist.localize(resolve_device(name, field))  # a bare "cuda" is this rank's GPU

    def close(self) -> None:
        """Stop the sampler's worker thread, if it has one (prefetched or streamed data); a
        trainer that is done with should be closed, or the thread outlives it."""
        if isinstance(self.sampler, PrefetchSampler):
            self.sampler.close()

    def _place(self, G: nn.Module, D: nn.Module) -> tuple[nn.Module, nn.Module]:
        accel = self.cfg.accel
        G, D = G.to(self.g_device), D.to(self.d_device)
        if accel.g_stages:
            G = split_network(G, accel.g_stages, "accel.g_stages")
        if accel.d_stages:
            D = split_network(D, accel.d_stages, "accel.d_stages")
        if accel.channels_last:
            G, D = to_channels_last(G), to_channels_last(D)
        return G, D

    def phase(self, name: str) -> contextlib.AbstractContextManager:
        return self.timer.phase(name) if self.timer else contextlib.nullcontext()

    def recalibrated_G_ema(self) -> nn.Module:
        """G_ema in eval mode with BatchNorm statistics re-estimated for its weights
        (`hetgan.artifact.recalibrated_for`), as grids, evaluations and artifacts use it: made once
        per step, since the grid, the evaluation and the artifact of one step would each run the
        same fixed batches through the same weights. Read-only: callers must not change it."""
        if self._recalibrated is None:
            self._recalibrated = recalibrated_for(self.G_ema, self.cfg)
        return self._recalibrated

    # --- one iteration ------------------------------------------------------------------------
    def step(self) -> StepResult:
        result = StepResult()
        self._set_learning_rates(result)
        self.nimg += self.cfg.train.batch_size * self.loss.n_critic
        if self.graph is not None and self.timer is None:  # a phase breakdown times the eager step
            self.graph.run([self._inputs() for _ in range(self.loss.n_critic)], result)
        else:
            self.iterate(result)
        self._adapt_augmentation(result)
        self.step_count += 1
        self._recalibrated = None  # G_ema moved: a copy made for the last step must not outlive it
        self._uncounted.append((self.step_count, result))
        if not self.skip_on_device or len(self._uncounted) >= COUNT_EVERY:
            self.count_skipped()
        return result

    def _adapt_augmentation(self, result: StepResult) -> None:
        """ADA (loss.ada_target): move p after every `ada_interval` D phases, by r_t averaged over
        the ranks; p (and r_t, where just measured) go into the step's record."""
        ada = self.loss.ada
        if ada is None:
            return
        ada.adjust(self.cfg.train.batch_size, lambda rt: self.dist.mean_floats({"rt": rt})["rt"])
        result.losses["ada_p"] = ada.p
        if ada.rt is not None:
            result.losses["ada_rt"] = ada.rt

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A D phase's real batch, z and (conditional runs) the real batch's labels, which its fake
        batch is generated for too: this rank's part of the global batch's."""
        B = self.cfg.train.batch_size
        with self.phase("data"):
            real, y = self.sampler.next(B), None
            if self.cfg.model.conditional:
                real, y = real
            real = self._layout(real)
        with self.phase("g_forward"):
            z = self.dist.shard.part(torch.randn(B, self.cfg.model.z_dim, generator=self.rng, device=self.z_device))
        return real, z, y

    def iterate(self, result: StepResult, inputs: list[tuple] | None = None) -> None:
        """The step's work: `n_critic` D phases, then the G phase, on `inputs` (a real batch, z and
        labels or None for each D phase), or on inputs drawn as each D phase begins.

        A conditional run generates its fakes for the real batch's labels: the fake labels then
        follow the data's class frequencies, and WGAN-GP's interpolates join images of one class."""
        fake = None
        for k in range(self.loss.n_critic):
            real, z, y = inputs[k] if inputs is not None else self._inputs()
            with self.phase("g_forward"):
                # Only the last D step's fake keeps its graph: the G step reuses that forward.
                with torch.set_grad_enabled(k == self.loss.n_critic - 1), self.autocast_G():
                    fake = self.G_fwd(z) if y is None else self.G_fwd(z, y.to(self.z_device))
            if fake.device != real.device:
                with self.phase("transfer"):
                    fake = fake.to(real.device)  # differentiable: G's gradient comes back over it
            if self.d_precision == "fp32" and fake.dtype in (torch.float16, torch.bfloat16):
                fake = fake.float()  # G ran in reduced precision, D does not autocast
            D = with_labels(self.D_fwd, y)
            if self.loss.trains_d:  # not a student distilled without D
                self._d_phase(real, fake, result, D)
        self._g_phase(fake, result, z, D, y)

    def _set_learning_rates(self, result: StepResult) -> None:
        """From the config on every step, so a resumed run with changed rates uses the new ones."""
        optim = self.cfg.optim
        scale = lr_scale(optim, self.nimg / 1000)
        for opt, lr in ((self.opt_G, optim.g_lr), (self.opt_D, optim.d_lr)):
            for group in opt.param_groups:
                if torch.is_tensor(group["lr"]):  # read by a captured step (StepGraph)
                    group["lr"].fill_(lr * scale)
                else:
                    group["lr"] = lr * scale
        if optim.lr_decay != "none":
            result.losses["lr_scale"] = scale

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.accel.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast_G(self):
        return autocast(self.g_precision, self.g_device_types, cache=self.graph is None)

    def autocast_D(self):
        return autocast(self.d_precision, self.d_device_types, cache=self.graph is None)

    def _d_phase(self, real: torch.Tensor, fake: torch.Tensor, result: StepResult, D) -> None:
        with self.phase("d_forward"), self.autocast_D():
            loss, stats = self.loss.d_loss(D, real, fake)
        result.losses.update({k: v.detach() for k, v in stats.items()}, loss_d=loss.detach())
        bad = self._nonfinite(loss, "D", result)
        if bad is True:
            return  # no weight or optimiser update
        self._backward_and_step(loss, self.opt_D, self.scaler_D, "d", bad)

    def _g_phase(self, fake: torch.Tensor, result: StepResult, z: torch.Tensor, D, y: torch.Tensor | None) -> None:
        self.D.requires_grad_(False)  # G's step needs no gradients for D's weights
        try:
            with self.phase("g_loss_forward"), self.autocast_D():
                loss, stats = self.loss.g_loss(D, fake, z, y)
        finally:
            self.D.requires_grad_(True)
        result.losses.update({k: v.detach() for k, v in stats.items()}, loss_g=loss.detach())
        bad = self._nonfinite(loss, "G", result)
        if bad is True:
            return  # no weight, optimiser or EMA update
        self._backward_and_step(loss, self.opt_G, self.scaler_G, "g", bad)
        with self.phase("ema"):
            self._update_ema(bad)

    def _nonfinite(self, loss: torch.Tensor, phase: str, result: StepResult) -> bool | torch.Tensor:
        """Whether the phase's loss is non-finite: a bool, which waits for the device, or with
        fused Adam a bool tensor that the optimiser and EMA read on the device (unless one of
        them is on the CPU and the loss is not: `flag_needs_host`). The step result
        keeps whether any of the step's `n_critic` D phases was."""
        bad = ~torch.isfinite(loss.detach())
        if not self.skip_on_device or flag_needs_host(bad.device, self.flag_readers[phase]):
            bad = bool(bad)
        bad = self.dist.any(bad)  # every rank skips the phase if one must (distributed.py)
        before = result.nonfinite.get(phase)
        result.nonfinite[phase] = bad if before is None else before | bad
        return bad

    def _backward_and_step(self, loss, opt, scaler, name: str, bad: bool | torch.Tensor) -> None:
        """`bad` False, or a bool tensor: then the optimiser skips its update on the device when it
        is set (fused Adam reads `found_inf` as GradScaler sets it)."""
        on_device = torch.is_tensor(bad)
        if on_device and scaler:
            # The scaler skips steps whose gradients are non-finite; a non-finite loss can still
            # give finite gradients (their seed is the scale), so make them NaN as well.
            loss = loss * torch.where(bad, float("nan"), 1.0)
        if scaler:
            loss = loss.to(self.scale_device[name])  # see loss_scale_device
        opt.zero_grad(set_to_none=True)
        with self.phase(f"{name}_backward"):
            (scaler.scale(loss) if scaler else loss).backward()
        with self.phase(f"{name}_allreduce"):
            self.dist.average_gradients(p for group in opt.param_groups for p in group["params"])
        with self.phase(f"{name}_optimizer"):
            if scaler:
                scaler.step(opt)  # skipped by the scaler itself when fp16 gradients overflowed
                scaler.update()
            elif on_device:
                opt.found_inf = bad.float()
                try:
                    opt.step()
                finally:
                    del opt.found_inf
            else:
                opt.step()

    def ema_rate(self) -> float:
        """How far G_ema moves toward G this step: a half-life of ema_kimg, ramped up early
        (Karras 2020)."""
        t = self.cfg.train
        ema_nimg = min(t.ema_kimg * 1000, self.nimg * t.ema_rampup) if t.ema_rampup else t.ema_kimg * 1000
        return 1.0 - 0.5 ** (t.batch_size * self.loss.n_critic / max(ema_nimg, 1e-8))

    @torch.no_grad()
    def _update_ema(self, bad: bool | torch.Tensor = False) -> None:
        """G_ema <- lerp toward G by `ema_rate`; no update where `bad`, a bool tensor from a G
        phase skipped on the device. A captured step reads the rate from a device tensor."""
        rate = self.graph.ema_rate if self.graph is not None and self.graph.capturing else self.ema_rate()
        if torch.is_tensor(bad):
            rate = rate * (~bad).float()
        for device, (ema_params, params) in self.ema_groups.items():
            # ema += rate * (p - ema). Not _foreach_lerp_: it takes a tensor weight as a host
            # scalar, so a device tensor there is read back (a wait for the GPU); the same sums
            # for a host rate too, so the two ways give the same weights to the bit.
            w = rate.to(device, non_blocking=True) if torch.is_tensor(rate) else rate  # see flag_needs_host
            delta = torch._foreach_sub(params, ema_params)
            torch._foreach_mul_(delta, w)
            torch._foreach_add_(ema_params, delta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            b_ema.copy_(b)

    def count_skipped(self) -> None:
        """Count the non-finite steps not yet counted (reading device-side flags waits for the
        device); raise TrainingDiverged once max_nonfinite_steps come in a row."""
        uncounted, self._uncounted = self._uncounted, []
        limit = self.cfg.train.max_nonfinite_steps
        for step, result in uncounted:
            if not result.skipped:
                self.nonfinite_in_row = 0
                continue
            self.nonfinite_in_row += 1
            self.nonfinite_total += 1
            if self.nonfinite_in_row >= limit:
                bad = {k: v for k, v in result.floats().items() if not math.isfinite(v)}
                raise TrainingDiverged(
                    f"training diverged: {limit} steps in a row had non-finite losses, the last at "
                    f"step {step} ({bad}); lower the learning rates (optim.g_lr, optim.d_lr) or "
                    "try --set loss.name=hinge, and resume from the last good checkpoint"
                )

    # --- checkpoint state ---------------------------------------------------------------------
    def saved_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """`state()` as a checkpoint takes it. On data-parallel ranks, BatchNorm's running statistics
        are averaged over the ranks first and the state is checked equal on every rank (every rank
        calls this; rank 0 writes what it returns, distributed.py)."""
        if self.dist.active:
            for net in (self.G, self.D, self.G_ema):
                self.dist.average_buffers(net)
        tensors, meta = self.state()
        if self.dist.active:
            counters = torch.tensor([self.step_count, self.nimg, self.nonfinite_total])
            # All but torch's global CPU stream, which training does not draw from (rank 0's grids may).
            checked = [tensors[k] for k in sorted(tensors) if k != "rng.torch_cpu"]
            self.dist.check_same("the training state", [*checked, counters])
        return tensors, meta

    def _scalers(self) -> dict[str, torch.amp.GradScaler]:
        return {name: s for name, s in (("scaler_G", self.scaler_G), ("scaler_D", self.scaler_D)) if s}

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        self.count_skipped()  # the counts go into the checkpoint, and a diverged run saves none
        tensors: dict[str, torch.Tensor] = {}
        for name in ("G", "D", "G_ema"):
            for k, v in getattr(self, name).state_dict().items():
                tensors[f"{name}.{k}"] = v
        opt_g_tensors, opt_g_meta = flatten_optimizer("opt_G", self.opt_G)
        opt_d_tensors, opt_d_meta = flatten_optimizer("opt_D", self.opt_D)
        tensors.update(opt_g_tensors, **opt_d_tensors)
        tensors["rng.train"] = self.rng.get_state()  # a state whose form depends on the device type
        tensors["rng.torch_cpu"] = torch.get_rng_state()
        sampler_json = {}
        for k, v in self.sampler.state_dict().items():
            if torch.is_tensor(v):
                tensors[f"sampler.{k}"] = v
            else:
                sampler_json[k] = v
        meta = {
            "hetgan_version": __version__,
            "config": to_dict(self.cfg),
            "step": self.step_count,
            "nimg": self.nimg,
            "rng_device": self.z_device.type,
            "nonfinite_total": self.nonfinite_total,
            "nonfinite_in_row": self.nonfinite_in_row,
            "opt_G": opt_g_meta,
            "opt_D": opt_d_meta,
            "sampler": sampler_json,
            "scalers": {name: s.state_dict() for name, s in self._scalers().items()},
        }
        if self.loss.ada is not None:
            meta["ada"] = self.loss.ada.state_dict()
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        if self.graph is not None:
            self.graph.reset()  # the optimiser state a captured step reads is about to be replaced
        for name in ("G", "D", "G_ema"):
            prefix = name + "."
            sd = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            try:
                getattr(self, name).load_state_dict(sd)
            except RuntimeError as e:  # torch lists every mismatched tensor: name the first
                lines = str(e).splitlines()
                first = lines[1].strip() if len(lines) > 1 else lines[0] if lines else ""
                raise CheckpointError(
                    f"the checkpoint's {name} does not fit the network this config builds ({first}); "
                    "settings that shape the networks (model.*, data.resolution, data.channels, loss.pack) "
                    "cannot change on resume: resume with the run's own values, or start a new run"
                ) from e
        restore_optimizer("opt_G", self.opt_G, tensors, meta["opt_G"])
        restore_optimizer("opt_D", self.opt_D, tensors, meta["opt_D"])
        self._restore_rng(tensors["rng.train"], meta.get("rng_device"), meta["step"])
        torch.set_rng_state(tensors["rng.torch_cpu"])
        for name, scaler in self._scalers().items():
            if name in meta["scalers"]:  # not when the run was resumed into fp16 (a fresh scale then)
                scaler.load_state_dict(meta["scalers"][name])
        sampler_state = dict(meta["sampler"])
        sampler_state.update({k[8:]: v for k, v in tensors.items() if k.startswith("sampler.")})
        self.sampler.load_state_dict(sampler_state)
        if self.loss.ada is not None and "ada" in meta:  # not when ADA was switched on at the resume
            self.loss.ada.load_state_dict(meta["ada"])
        self.step_count, self.nimg = meta["step"], meta["nimg"]
        self._recalibrated = None  # G_ema's weights are the checkpoint's now
        self.nonfinite_total, self.nonfinite_in_row = meta["nonfinite_total"], meta["nonfinite_in_row"]

    def _restore_rng(self, state: torch.Tensor, saved_type: str | None, step: int) -> None:
        """Continue the draws for z (and the loss's augmentation and penalty mixing) where the
        checkpoint left them. A generator of another device type keeps its state in another form
        (a run trained on a GPU and resumed on the CPU, e.g. under --device auto): it is then
        reseeded from the config's seed and the step, and the run goes on, but not bit-for-bit."""
        if saved_type in (None, self.z_device.type):  # None: a checkpoint from before rng_device
            try:
                self.rng.set_state(state)
                return
            except RuntimeError:  # a state of another form: saved on another device type
                pass
        self.rng.manual_seed(self.cfg.seed + 1 + step)
        log.warning(
            "the checkpoint's random stream for z was drawn on %s and this run draws it on %s, where "
            "that stream cannot be continued: it is reseeded from the seed and the step, so the run "
            "goes on, but not bit-for-bit as it would have on the original device",
            saved_type or "another device type",
            self.z_device.type,
        )
