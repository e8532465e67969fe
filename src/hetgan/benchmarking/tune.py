"""`hetgan tune` and `hetgan train --placement auto`: try candidate knob settings for a few seconds
each, in interleaved rounds, reject any that is not numerically sound, keep the fastest.

Sound means: finite outputs, and G's and D's outputs on a fixed batch within a stated tolerance of
the plain fp32 configuration (same seed, so the same initial weights).
"""

from __future__ import annotations

import copy
import functools
import gc
import logging
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from hetgan.accel import apply_backend_flags, restored_backend_flags
from hetgan.benchmarking.training import check_timing, trainer_timer
from hetgan.config import AccelConfig, TrainConfig, apply_overrides, dump_yaml
from hetgan.data import load_data
from hetgan.data.sources import Data
from hetgan.errors import HetganError, TuneError
from hetgan.fileio import write_text
from hetgan.models import build_models
from hetgan.models.layers import batch_coupled
from hetgan.placement import resolve_device
from hetgan.training.rundir import provenance, with_absolute_paths
from hetgan.training.trainer import Trainer

log = logging.getLogger("hetgan")

# Largest relative deviation from the fp32 reference we accept, by precision. fp32 layout or
# compilation changes only summation order (~1e-6); bf16 keeps 8 mantissa bits (~4e-3 per op).
# TF32 (fp32 matrix products on NVIDIA tensor cores) keeps fp16's 10 mantissa bits, so fp16's limit.
TOLERANCE = {"fp32": 1e-3, "tf32": 2e-2, "bf16": 5e-2, "fp16": 2e-2}

# A candidate with more knobs set must be this much faster than a simpler sound one to be chosen:
# within it the two are a tie on a noisy machine, and fewer knobs start faster (no compilation)
# and have less that can go wrong.
TIE_MARGIN = 0.03

# After the first round, a candidate under this share of the fastest sound one's speed is timed no
# more (and its trainer freed): window-to-window noise here is up to a third, not half. Unsound
# candidates are timed once too: their speed is shown, but they cannot be chosen.
DROP_BELOW = 0.5


@dataclass
class Candidate:
    name: str
    overrides: list[str] = field(default_factory=list)
    img_per_s: float | None = None
    max_rel_error: float | None = None
    rejected: str | None = None
    timed_once: bool = False  # dropped after the first round (see DROP_BELOW)


# The knobs tune sets. Every candidate is the plain config (these at their defaults) plus its own
# settings; placement (device, g_device, d_device, stages) stays as the config has it.
SPEED_KNOBS = (
    "precision",
    "channels_last",
    "compile",
    "cuda_graphs",
    "tf32",
    "cudnn_benchmark",
    "optimizer_impl",
    "threads",
    "batch_layout",
)


def candidates_for(cfg: TrainConfig, device: torch.device) -> list[Candidate]:
    """What is worth trying on this device type (channels_last only where the networks convolve).

    The first candidate is the plain config, fp32 and eager, which the others are checked against;
    the config as given comes next when it sets knobs of its own (a preset may). Each candidate's
    overrides are what it changes in the given config, and candidates that come to the same
    setting are tried once."""
    make = CandidateMaker(cfg)
    out = [make.plain_plus("plain (fp32, contiguous, eager)" if make.conv else "plain (fp32, eager)")]
    own = [k for k in SPEED_KNOBS if getattr(cfg.accel, k) != getattr(AccelConfig(), k)]
    if own:
        out.append(Candidate(f"as configured ({', '.join(f'{k}={as_text(getattr(cfg.accel, k))}' for k in own)})"))
    if device.type == "cpu":
        return unique(out + cpu_candidates(make))
    return unique(out + accelerator_candidates(make, device) + placement_candidates(cfg, device, out[0]))


class CandidateMaker:
    """Candidates as the plain config plus knobs, with overrides relative to the given config."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        G, D = build_models(cfg)
        # channels_last only where a convolution is, so that a memory layout can matter.
        self.conv = any(isinstance(m, nn.modules.conv._ConvNd) for net in (G, D) for m in net.modules())
        self.layout = {"channels_last": True} if self.conv else {}
        self.joint = not batch_coupled(D)  # D may judge real and fake in one forward

    def plain_plus(self, name: str, **knobs) -> Candidate:
        target = {k: getattr(AccelConfig(), k) for k in SPEED_KNOBS} | knobs
        changed = {k: v for k, v in target.items() if getattr(self.cfg.accel, k) != v}
        return Candidate(name, [f"accel.{k}={as_text(v)}" for k, v in changed.items()])

    def with_layout(self, name: str, **knobs) -> Candidate:
        """channels_last and the knobs, for conv nets; the knobs alone otherwise."""
        return self.plain_plus(" + ".join(["channels_last", name] if self.conv else [name]), **self.layout, **knobs)


def cpu_candidates(make: CandidateMaker) -> list[Candidate]:
    cores = os.cpu_count() or 1
    threads = sorted({1, max(1, cores // 2), cores} - {torch.get_num_threads()})  # plain runs that
    out = [make.plain_plus(f"threads={t}", threads=t) for t in threads]
    out += [make.plain_plus("channels_last", **make.layout)] if make.conv else []
    # Adam's fused CPU kernel: the default per-parameter loop is a quarter of an MLP's step.
    out += [make.with_layout("fused Adam", optimizer_impl="fused")]
    out += [make.with_layout("compile", compile=True), make.with_layout("bf16", precision="bf16")]
    if make.joint:  # D judges real and fake in one forward: fewer, larger products (1.2x D's phase, mlp_mnist)
        joint = {"batch_layout": "joint"}
        out += [
            make.with_layout("joint D batch", **joint),
            make.with_layout("fused Adam + joint D batch", optimizer_impl="fused", **joint),
            make.with_layout("bf16 + joint D batch", precision="bf16", **joint),
        ]
    return out


def accelerator_candidates(make: CandidateMaker, device: torch.device) -> list[Candidate]:
    bf16 = {"precision": "bf16"}
    out = [
        make.plain_plus("tf32 + cudnn.benchmark", tf32=True, cudnn_benchmark=True),
        make.with_layout("bf16", **bf16),
        make.with_layout("bf16 + fused", **bf16, optimizer_impl="fused"),
        # Contiguous: torch 2.11's compiled convolution backward fails on channels_last inputs (its
        # stride assertion, seen on an H100).
        make.plain_plus("bf16 + compile", **bf16, compile=True, optimizer_impl="fused"),
    ]
    if device.type == "cuda":  # the whole step as one graph: eager kernels, so either layout
        graphs = {"cuda_graphs": True, "optimizer_impl": "fused"}
        out.append(make.plain_plus("bf16 + CUDA graphs", **bf16, **graphs))
        out.append(make.with_layout("bf16 + CUDA graphs", **bf16, **graphs))
        out.append(make.plain_plus("bf16 + compile + CUDA graphs", **bf16, compile=True, **graphs))
        # cuDNN's autotuning paid off for the captured step at large batches
        # (benchmarks/RESULTS.md, "Training speed on a GPU").
        out.append(make.with_layout("bf16 + cudnn.benchmark + CUDA graphs", **bf16, cudnn_benchmark=True, **graphs))
    if make.joint:  # D judges real and fake in one forward
        joint = {"batch_layout": "joint"}
        out.append(make.with_layout("bf16 + fused + joint D batch", **bf16, optimizer_impl="fused", **joint))
        if device.type == "cuda":
            out.append(make.with_layout("bf16 + CUDA graphs + joint D batch", **bf16, **graphs, **joint))
    return out


def placement_candidates(cfg: TrainConfig, device: torch.device, plain: Candidate) -> list[Candidate]:
    """The plain config (so they are judged on speed alone) with the seed's G on the accelerator
    and D on the CPU, the reverse, and G and D on two GPUs where there are two; none where the
    config fixes placement, since a user's --g-device/--d-device or stage split is a given."""
    accel = cfg.accel
    if accel.g_device or accel.d_device or accel.g_stages or accel.d_stages:
        return []
    placements = [
        (f"G on {device.type}, D on cpu", ["accel.d_device=cpu"]),
        (f"D on {device.type}, G on cpu", ["accel.g_device=cpu"]),
    ]
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        placements.append(("G on cuda:0, D on cuda:1", ["accel.g_device=cuda:0", "accel.d_device=cuda:1"]))
    return [Candidate(name, plain.overrides + where) for name, where in placements]


def as_text(value) -> str:
    """A knob's value as --set takes it: true/false for booleans."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def unique(candidates: list[Candidate]) -> list[Candidate]:
    """The first of the candidates that set the same overrides."""
    seen, out = set(), []
    for c in candidates:
        if frozenset(c.overrides) not in seen:
            seen.add(frozenset(c.overrides))
            out.append(c)
    return out


def reference_outputs(cfg: TrainConfig, trainer: Trainer) -> tuple[torch.Tensor, ...]:
    """G(z) for a fixed z, and D's logits as its phase judges a batch pair (G(z) reversed standing
    in for the real batch, G(z) as the fake one; in one forward or two, as the candidate's
    `batch_layout` says), in fp32 on the CPU for comparison. D sees them without augmentation: its
    random draws come from the trainer's generator, whose stream depends on the device it is on,
    so they would differ between placements that compute the same thing."""
    gen = torch.Generator().manual_seed(1234)
    z = torch.randn(cfg.train.batch_size, cfg.model.z_dim, generator=gen).to(trainer.z_device)
    with torch.no_grad(), trainer.autocast_G():
        # A copy: under CUDA graphs the next compiled call (D's) may overwrite G's output buffer.
        fake = trainer.G_fwd(z).clone()
    with torch.no_grad(), trainer.autocast_D():
        x = trainer._layout(fake.float().to(trainer.data_device))
        logits = trainer.loss.judge(trainer.D_fwd, x.flip(0), x, augmented=False)
    return fake.float().cpu(), *(t.float().cpu() for t in logits)


def tolerance(accel: AccelConfig) -> float:
    """The largest relative error a candidate with these settings may show (TOLERANCE)."""
    tf32 = accel.precision == "fp32" and accel.tf32
    return TOLERANCE["tf32" if tf32 else accel.precision]


def max_rel_error(got: tuple[torch.Tensor, ...], ref: tuple[torch.Tensor, ...]) -> float:
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in zip(got, ref, strict=True))


class Trial:
    """One candidate's trainer, built once and timed in several windows."""

    def __init__(self, cfg: TrainConfig, data: Data | None = None) -> None:
        self.cfg = cfg
        self.trainer = Trainer(cfg, data)
        self.outputs = reference_outputs(cfg, self.trainer)  # before any step: weights equal the reference's
        self.warm = False

    def close(self) -> None:
        self.trainer.close()

    def img_per_s(self, seconds: float) -> float:
        apply_backend_flags(self.cfg.accel)  # process-wide (threads, TF32): set for this window only
        speed = trainer_timer(self.trainer, seconds)(self.warm)
        self.warm = True
        return speed


Prepare = Callable[[TrainConfig], Trial]


def time_candidates(
    cfg: TrainConfig,
    candidates: list[Candidate],
    seconds: float = 3.0,
    rounds: int = 3,
    prepare: Prepare | None = None,
) -> tuple[Candidate, list[Candidate]]:
    """Time each candidate; the fastest sound one wins. The first candidate is the reference.

    Each candidate gets `seconds` of timing in all, as `rounds` windows taken in turn with the
    other candidates' (their trainers are alive together until `drop_clear_losers` frees the ones
    that cannot win), and its speed is the median of its windows: a slow spell of the machine then
    lands on every candidate instead of on one."""
    if prepare is None:  # the data is read (decoded, for a folder) once and shared by every candidate
        prepare = functools.partial(Trial, data=load_data(cfg.data))
    candidates = [Candidate(c.name, list(c.overrides)) for c in candidates]  # fresh results each call
    trials = prepare_trials(cfg, candidates, prepare)
    try:
        speeds = time_trials(trials, candidates, seconds / rounds, rounds)
    finally:
        for trial in trials.values():
            trial.close()
    for i, values in speeds.items():
        if values:
            candidates[i].img_per_s = statistics.median(values)
    sound = [c for c in candidates if c.rejected is None and c.img_per_s is not None]
    if not sound:
        raise TuneError(
            "tune: every candidate was rejected, including the plain configuration (each one's reason "
            "is in the log above); check that `hetgan train` runs with this config first"
        )
    return pick(sound), candidates


def prepare_trials(cfg: TrainConfig, candidates: list[Candidate], prepare: Prepare) -> dict[int, Trial]:
    """Build each candidate's trainer and judge its outputs against the first's; a candidate that
    cannot be built is rejected, unless it is the first (the reference)."""
    reference = None
    trials: dict[int, Trial] = {}
    for i, cand in enumerate(candidates):
        cand_cfg = apply_overrides(copy.deepcopy(cfg), cand.overrides)
        try:
            with restored_backend_flags():
                trials[i] = prepare(cand_cfg)
        except Exception as e:  # a knob this machine cannot do (e.g. no compiler) is a rejection
            if reference is None and isinstance(e, HetganError):
                raise  # the user's own config is wrong (a device name, a data path): say so as it is
            cand.rejected = failure(e)
            if reference is None:  # every other candidate is judged against this one
                raise TuneError(
                    f"tune: the reference candidate {cand.name!r} {cand.rejected}; nothing to compare "
                    "the others with. Check that `hetgan train` runs with this config first"
                ) from e
            log.info("tune: %s rejected (%s)", cand.name, cand.rejected)
            continue
        outputs = trials[i].outputs
        if reference is None:
            reference = outputs
        if not all(torch.isfinite(t).all() for t in outputs):
            cand.rejected = "non-finite outputs"
            continue
        cand.max_rel_error = max_rel_error(outputs, reference)
        limit = tolerance(cand_cfg.accel)
        if cand.max_rel_error > limit:
            cand.rejected = f"off the fp32 reference by {cand.max_rel_error:.2e} > {limit:.0e}"
    return trials


def time_trials(
    trials: dict[int, Trial], candidates: list[Candidate], window: float, rounds: int
) -> dict[int, list[float]]:
    """img/s of each trial in `rounds` windows taken in turn; one that fails while timed is
    rejected and dropped (the reference's failure stops tune), and after the first round so are
    the unsound ones and those far behind (`drop_clear_losers`)."""
    speeds: dict[int, list[float]] = {i: [] for i in trials}
    for r in range(rounds):
        if r == 1:
            drop_clear_losers(trials, candidates, speeds)
        for i, trial in list(trials.items()):
            try:
                with restored_backend_flags():
                    speeds[i].append(trial.img_per_s(window))
            except Exception as e:  # e.g. out of memory, or a compile error on the first steps
                if i == 0:
                    raise TuneError(f"tune: the reference candidate {candidates[i].name!r} {failure(e)}") from e
                candidates[i].rejected, candidates[i].max_rel_error = failure(e), None
                speeds[i] = []
                trials.pop(i).close()
                log.info("tune: %s rejected (%s)", candidates[i].name, candidates[i].rejected)
    return speeds


def drop_clear_losers(trials: dict[int, Trial], candidates: list[Candidate], speeds: dict[int, list[float]]) -> None:
    """Stop timing (and free the trainers of) the candidates that cannot be chosen: unsound ones,
    and sound ones under DROP_BELOW of the fastest sound one's first window. The reference stays."""
    sound = [speeds[i][0] for i in trials if candidates[i].rejected is None]
    fastest = max(sound, default=0.0)
    for i in list(trials):
        if i != 0 and (candidates[i].rejected is not None or speeds[i][0] < DROP_BELOW * fastest):
            candidates[i].timed_once = True
            trials.pop(i).close()
    gc.collect()  # a compiled trainer's reference cycles would otherwise hold its memory a while


@dataclass
class TuneResult:
    config: TrainConfig  # the tuned config: the input with the chosen candidate's overrides applied
    chosen: Candidate
    table: list[Candidate]  # every candidate, with its speed, error and verdict

    def summary(self) -> str:
        return format_tune(self.chosen, self.table)

    def save_config(self, path: str | Path) -> Path:
        """Write the tuned config as YAML, with absolute paths as in a run's config.yaml (they name
        the same files from any folder), to train with `hetgan train --config PATH`."""
        path = Path(path)
        write_text(path, dump_yaml(with_absolute_paths(self.config)))
        return path

    def record(self, cfg: TrainConfig) -> dict:
        """What `hetgan tune --json` writes: the machine and config `cfg` tuned on, the choice, the table."""
        record = provenance(cfg, resolve_device(cfg.accel.device))
        return {**record, "chosen": self.chosen.overrides, "table": [vars(c) for c in self.table]}


def tune(
    cfg: TrainConfig,
    seconds: float = 3.0,
    rounds: int = 3,
    candidates: list[Candidate] | None = None,
    prepare: Prepare | None = None,
) -> TuneResult:
    """Time candidate placements and knobs and pick the fastest sound one (`hetgan tune`).

    Args:
        cfg: the run to tune; its device decides the candidates (threads, precision, channels_last,
            compile, placements of G and D, ...), unless `candidates` are given.
        seconds: timed seconds per candidate, over all its windows.
        rounds: timing windows per candidate, taken in turn with the others'.
        candidates: the candidates to time (default: those for cfg's device).
        prepare: a stand-in for building each candidate's trainer (tests).

    Returns:
        `TuneResult`: `config` (cfg with the choice applied), `chosen`, the `table` of every
        candidate with its speed, error against the plain step and verdict; `summary()`,
        `save_config(path)`.

    Raises:
        TuneError: the reference configuration itself fails; ConfigError: bad seconds or rounds.

    Example:
        >>> tuned = hetgan.tune(hetgan.get_preset("dcgan_mnist"), seconds=2)
        >>> hetgan.train(tuned.config)
    """
    check_timing(seconds, rounds)
    if candidates is None:
        candidates = candidates_for(cfg, resolve_device(cfg.accel.device))
    chosen, table = time_candidates(cfg, candidates, seconds, rounds, prepare)
    return TuneResult(apply_overrides(copy.deepcopy(cfg), chosen.overrides), chosen, table)


def pick(sound: list[Candidate], margin: float = TIE_MARGIN) -> Candidate:
    """The fastest, unless a candidate with fewer overrides is within `margin` of it."""
    fastest = max(c.img_per_s for c in sound)
    ties = [c for c in sound if c.img_per_s >= (1 - margin) * fastest]
    return min(ties, key=lambda c: (len(c.overrides), -c.img_per_s))


def failure(e: Exception) -> str:
    first_line = str(e).splitlines()[0][:120] if str(e) else "(no message)"
    return f"failed: {type(e).__name__}: {first_line}"


def format_tune(best: Candidate, table: list[Candidate]) -> str:
    """The table: each candidate's img/s, its speed over the first row's (the plain config, the
    reference), its error against that reference, and the verdict; then the choice."""
    lines = [f"{'candidate':<44}{'img/s':>10}{'vs first':>10}{'max rel err':>13}  verdict"]
    reference = table[0].img_per_s
    for c in table:
        img = f"{c.img_per_s:.1f}" if c.img_per_s else "-"
        ratio = f"{c.img_per_s / reference:.2f}x" if c.img_per_s and reference else "-"
        err = f"{c.max_rel_error:.1e}" if c.max_rel_error is not None else "-"
        verdict = "BEST" if c is best else (f"rejected: {c.rejected}" if c.rejected else "ok")
        if c.timed_once and not c.rejected:
            verdict += f" (timed once: under {DROP_BELOW:.0%} of the fastest)"
        lines.append(f"{c.name:<44}{img:>10}{ratio:>10}{err:>13}  {verdict}")
    flags = " ".join(f"--set {o}" for o in best.overrides) or "(no overrides)"
    lines.append(f"chosen: {best.name}: {flags}")
    fastest = max((c for c in table if c.rejected is None and c.img_per_s is not None), key=lambda c: c.img_per_s)
    if fastest is not best:
        lines.append(
            f"  ({fastest.name} measured {fastest.img_per_s / best.img_per_s - 1:.1%} faster, within the "
            f"{TIE_MARGIN:.0%} tie margin: the setting with fewer knobs is kept)"
        )
    return "\n".join(lines)
