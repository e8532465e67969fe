"""`hetgan tune` and `hetgan train --placement auto`: try candidate knob settings for a few seconds
each, reject any that is not numerically sound, keep the fastest.

Sound means: finite outputs, and G's and D's outputs on a fixed batch within a stated tolerance of
the plain fp32 configuration (same seed, so the same initial weights).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from hetgan.accel import restored_backend_flags
from hetgan.bench.bench import steady_img_per_s
from hetgan.config import TrainConfig, apply_overrides
from hetgan.training.trainer import Trainer

log = logging.getLogger("hetgan")

# Largest relative deviation from the fp32 reference we accept, by precision. fp32 layout or
# compilation changes only summation order (~1e-6); bf16 keeps 8 mantissa bits (~4e-3 per op).
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}


@dataclass
class Candidate:
    name: str
    overrides: list[str] = field(default_factory=list)
    img_per_s: float | None = None
    max_rel_error: float | None = None
    rejected: str | None = None


def candidates_for(cfg: TrainConfig, device: torch.device) -> list[Candidate]:
    """What is worth trying on this device type."""
    base = [Candidate("baseline (fp32, contiguous, eager)")]
    if device.type == "cpu":
        cores = os.cpu_count() or 1
        threads = sorted({1, max(1, cores // 2), cores})
        out = base + [Candidate(f"threads={t}", [f"accel.threads={t}"]) for t in threads]
        out += [Candidate("channels_last", ["accel.channels_last=true"])]
        out += [Candidate("channels_last + compile", ["accel.channels_last=true", "accel.compile=true"])]
        out += [Candidate("channels_last + bf16", ["accel.channels_last=true", "accel.precision=bf16"])]
        return out
    out = base + [
        Candidate("tf32 + cudnn.benchmark", ["accel.tf32=true", "accel.cudnn_benchmark=true"]),
        Candidate("bf16 + channels_last", ["accel.precision=bf16", "accel.channels_last=true"]),
        Candidate(
            "bf16 + channels_last + fused",
            ["accel.precision=bf16", "accel.channels_last=true", "accel.optimizer_impl=fused"],
        ),
        Candidate(
            "bf16 + channels_last + compile",
            ["accel.precision=bf16", "accel.channels_last=true", "accel.compile=true", "accel.optimizer_impl=fused"],
        ),
    ]
    if device.type == "cuda":
        out.append(
            Candidate(
                "bf16 + channels_last + CUDA graphs",
                [
                    "accel.precision=bf16",
                    "accel.channels_last=true",
                    "accel.cuda_graphs=true",
                    "accel.optimizer_impl=fused",
                ],
            )
        )
    return out


def reference_outputs(cfg: TrainConfig, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """G(z) and D(G(z)) for a fixed z, in fp32 on the CPU for comparison."""
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(cfg.train.batch_size, cfg.model.z_dim, generator=gen).to(trainer.z_device)
    with torch.no_grad(), trainer.autocast_G():
        fake = trainer.G_fwd(z)
    with torch.no_grad(), trainer.autocast_D():
        logits = trainer.loss.logits(trainer.D_fwd, trainer._layout(fake.float().to(trainer.data_device)))
    return fake.float().cpu(), logits.float().cpu()


def max_rel_error(got: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> float:
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, ref, strict=True))


def measure_candidate(cfg: TrainConfig, seconds: float) -> tuple[float, tuple[torch.Tensor, ...], Trainer]:
    trainer = Trainer(cfg)
    outputs = reference_outputs(cfg, trainer)  # before any step: weights equal the reference's
    return steady_img_per_s(trainer, seconds), outputs, trainer


Measure = Callable[[TrainConfig, float], tuple[float, tuple[torch.Tensor, ...], object]]


def tune(
    cfg: TrainConfig, candidates: list[Candidate], seconds: float = 3.0, measure: Measure = measure_candidate
) -> tuple[Candidate, list[Candidate]]:
    """Time each candidate; the fastest sound one wins. The first candidate is the reference."""
    reference = None
    candidates = [Candidate(c.name, list(c.overrides)) for c in candidates]  # fresh results each call
    for cand in candidates:
        cand_cfg = apply_overrides(copy.deepcopy(cfg), cand.overrides)
        try:
            with restored_backend_flags():
                img_s, outputs, _ = measure(cand_cfg, seconds)
        except Exception as e:  # a knob this machine cannot do (e.g. no compiler) is a rejection
            cand.rejected = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            if reference is None:  # every other candidate is judged against this one
                raise RuntimeError(
                    f"tune: the reference candidate {cand.name!r} {cand.rejected}; nothing to compare "
                    "the others with. Check that `hetgan train` runs with this config first"
                ) from e
            log.info("tune: %s rejected (%s)", cand.name, cand.rejected)
            continue
        cand.img_per_s = img_s
        if reference is None:
            reference = outputs
        if not all(torch.isfinite(t).all() for t in outputs):
            cand.rejected = "non-finite outputs"
            continue
        cand.max_rel_error = max_rel_error(outputs, reference)
        limit = TOLERANCE[cand_cfg.accel.precision]
        if cand.max_rel_error > limit:
            cand.rejected = f"off the fp32 reference by {cand.max_rel_error:.2e} > {limit:.0e}"
    sound = [c for c in candidates if c.rejected is None and c.img_per_s is not None]
    if not sound:
        raise RuntimeError("tune: every candidate was rejected, including the baseline")
    return max(sound, key=lambda c: c.img_per_s), candidates


def format_tune(best: Candidate, table: list[Candidate]) -> str:
    lines = [f"{'candidate':<44}{'img/s':>10}{'max rel err':>13}  verdict"]
    for c in table:
        img = f"{c.img_per_s:.1f}" if c.img_per_s else "-"
        err = f"{c.max_rel_error:.1e}" if c.max_rel_error is not None else "-"
        verdict = "BEST" if c is best else (f"rejected: {c.rejected}" if c.rejected else "ok")
        lines.append(f"{c.name:<44}{img:>10}{err:>13}  {verdict}")
    flags = " ".join(f"--set {o}" for o in best.overrides) or "(no overrides)"
    lines.append(f"chosen: {best.name}: {flags}")
    return "\n".join(lines)
