"""`train()`: set up a run (new or resumed), loop over steps, keep the run directory up to date.

The loop only schedules: it calls `Trainer.step()` and, when an interval is crossed, the named
maintenance helpers (metrics, sample grid, snapshot). SIGINT/SIGTERM finish the current step,
save a checkpoint and return cleanly.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hetgan.artifact import ARTIFACT_NAME, save_generator
from hetgan.benchmarking.tune import tune
from hetgan.config import RESUMABLE_FIELDS, TrainConfig, apply_overrides, load_yaml, to_dict
from hetgan.data import Mixture, colour_warning, describe_data
from hetgan.errors import CheckpointError, HetganError, TrainingStopped
from hetgan.generator import classes_in_turn
from hetgan.placement import resolve_device
from hetgan.report.plots import make_plots
from hetgan.sample_files import write_samples
from hetgan.training import distributed
from hetgan.training.checkpoint import list_checkpoints, load_latest_checkpoint, read_checkpoint, save_checkpoint
from hetgan.training.distributed import Distributed
from hetgan.training.monitor import Monitor, evaluator_for
from hetgan.training.rundir import (
    LOCK_NAME,
    MetricsWriter,
    absolute_paths,
    new_run_dir,
    run_lock,
    run_log,
    with_absolute_paths,
    write_config,
    write_machine,
)
from hetgan.training.tensorboard import Board, summary_writer
from hetgan.training.trainer import Trainer

log = logging.getLogger("hetgan")


@dataclass(frozen=True)
class TrainResult:
    """How a `train` call ended: finished, or stopped by a signal with a checkpoint saved.

    Example:
        >>> result = hetgan.train(hetgan.get_preset("mlp_ring8"), out="runs/ring")
        >>> G = hetgan.load_generator(result.run_dir)
    """

    run_dir: Path
    steps: int
    kimg: float
    stopped_by: str | None  # "SIGINT"/"SIGTERM" when interrupted, None when finished
    nonfinite_steps: int
    already_done: bool = False  # resumed a finished run that had reached train.kimg: nothing ran
    main: bool = True  # rank 0 (or a single process): the rank that wrote the run directory
    img_per_s: float | None = None  # real images per second over this call's steps, wall clock
    last_eval: dict | None = None  # the last evaluation during training (--eval-every), if any
    alarms: tuple[str, ...] = ()  # the monitor's alarms: collapse, a saturated D, blown-up losses

    def finished(self) -> TrainResult:
        """This result, if the run reached train.kimg (or had before: `already_done`); raises
        `TrainingStopped` if a signal stopped it first. For code that goes on to use the run (to
        evaluate it, compare it, record its figures), where a run stopped half way must not pass
        for a trained one: `hetgan.train` itself returns normally after Ctrl-C, as the command does.

        Example:
            >>> run = hetgan.train(hetgan.get_preset("mlp_ring8"), out="runs/ring").finished().run_dir
        """
        if self.stopped_by:
            raise TrainingStopped(f"{self.run_dir}: {self.summary()}")
        return self

    def summary(self) -> str:
        if self.already_done:
            return (
                f"nothing to do: {self.run_dir} has already trained {self.kimg:.1f} kimg and is finished; "
                f"to train on, resume with a larger --set train.kimg"
            )
        if self.stopped_by:
            return (
                f"stopped by {self.stopped_by} at step {self.steps}; checkpoint saved. "
                f"Continue with: hetgan train --resume {self.run_dir}"
            )
        skipped = f"; {self.nonfinite_steps} non-finite steps skipped" if self.nonfinite_steps else ""
        lines = [
            f"training finished: {self.kimg:.1f} kimg in {self.steps} steps{skipped}",
            *([f"  speed:         {self.img_per_s:,.0f} img/s"] if self.img_per_s else []),
            f"  quality:       {quality_line(self.last_eval, self.run_dir)}",
            f"  run directory: {self.run_dir}",
            f"  generator:     {self.run_dir / ARTIFACT_NAME}",
            f"  final samples: {self.run_dir / 'samples' / 'final.png'}",
            f"  metrics:       {self.run_dir / 'metrics.jsonl'}",
            f"  report:        hetgan report {self.run_dir}",
        ]
        if self.alarms:
            lines += [f"  WARNING: {len(self.alarms)} alarm(s) during training; the last:", f"    {self.alarms[-1]}"]
            lines.append("    look at the samples before using this generator (log.txt has them all)")
        return "\n".join(lines)


def quality_line(record: dict | None, run_dir: Path) -> str:
    """The last evaluation's headline figure, or how to measure one."""
    if not record:
        return f"not measured during training (--eval-every KIMG); measure it: hetgan eval --run {run_dir}"
    at = f"at {record['kimg']:g} kimg"
    if "fid" in record:
        space = record.get("feature_space", "features").split(";")[0].split(" (")[0]  # "digits (bundled ...)"
        return f"FID {record['fid']:.2f} in {space} {at}"
    if "modes_captured" in record:
        return f"{record['modes_captured']} modes, {record['high_quality']:.1%} high quality {at}"
    return f"evaluated {at}: see metrics.jsonl"


def train(
    cfg: TrainConfig | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: list[str] | None = None,
    allow_config_change: bool = False,
    progress: bool = True,
    placement: str = "manual",
    tune_seconds: float = 3.0,
) -> TrainResult:
    """Train a GAN (`hetgan train`); return how the run ended, its directory in `.run_dir`.

    Args:
        cfg: the run's config (default `TrainConfig()`; presets: `hetgan.get_preset(name)`).
        out: the run directory (default `runs/NNNNN-<preset>`); an existing one is never overwritten.
        resume: a run directory to continue exactly from its newest checkpoint, or "auto" (below).
        overrides: `["section.field=value", ...]`, applied on top of `cfg` (or of the resumed run's).
        allow_config_change: resume even where `overrides` change the checkpoint's config.
        progress: the progress bar on stderr. The outcome goes to the "hetgan" logger and the run's
            log.txt; set that logger's level to silence it.
        placement: "auto" times the candidate placements and knobs first (`hetgan.tune`, for
            `tune_seconds` each) and trains with the fastest sound one, which the run's config.yaml
            records; "manual" (default) trains with `cfg` as it is.

    Returns:
        `TrainResult`: `run_dir`, `steps`, `kimg`, `stopped_by` (a signal's name if interrupted,
        with a checkpoint saved), `summary()` (what `hetgan train` prints).

    Raises:
        HetganError: a bad config, data or run directory (ConfigError, CheckpointError,
            DataError, ...), with what was wrong and how to fix it.

    `resume="auto"` with `out`: continue `out` from its last checkpoint if it has one, else start
    it (again) from step 0, so that the same call both starts a run and continues it after a
    restart (torchrun --max-restarts, a Slurm requeue). Under torchrun, or in an initialised
    process group, every rank calls this and the run is trained data-parallel (distributed.py).

    Example:
        >>> result = hetgan.train(hetgan.get_preset("mlp_ring8"), out="runs/ring", overrides=["train.kimg=20"])
        >>> print(result.summary())
    """
    auto = str(resume) == "auto"
    check_start(cfg, out, resume, placement)
    if resume is None or auto:  # overrides apply to a new run's config too (a copy: the caller's stays)
        cfg = with_absolute_paths(apply_overrides(copy.deepcopy(cfg or TrainConfig()), overrides or []))
    else:
        cfg = resumed_config(Path(resume), overrides or [])
    if placement == "auto":  # the choice goes into the run's config.yaml
        tuned = tune(cfg, seconds=tune_seconds)
        log.info("%s", tuned.summary())
        cfg = tuned.config
    dist = distributed.setup(resolve_device(cfg.accel.device, "accel.device"))
    try:
        dist.name_logs()
        return _train_in(cfg, out, resume, allow_config_change, progress and dist.is_main, dist)
    finally:
        dist.close()


def check_start(cfg: TrainConfig | None, out, resume, placement: str) -> None:
    """Refuse a combination of `train`'s arguments that cannot mean one thing, before anything runs."""
    auto = str(resume) == "auto"
    if placement not in ("manual", "auto"):
        raise HetganError(f"placement {placement!r}: choose manual or auto")
    if auto and out is None:
        raise HetganError(
            "--resume auto continues or starts the run directory given by --out: pass --out DIR "
            "(in Python: pass out=DIR)"
        )
    if placement == "auto" and distributed.launched():
        raise HetganError(
            "--placement auto would tune on every rank, and the ranks could choose differently; run "
            "`hetgan tune` once, outside torchrun, and pass the knobs it prints with --set"
        )
    if resume is not None and not auto:
        if cfg is not None:
            raise HetganError(
                "a config (--preset, --config) cannot be combined with --resume RUN: the run's config.yaml is "
                "used; change a field with --set FIELD=VALUE --allow-config-change"
            )
        if placement == "auto":
            raise HetganError(
                "--placement auto cannot be combined with --resume: the run continues with the knobs in its "
                "config.yaml; to change them, pass --set accel.FIELD=VALUE --allow-config-change"
            )


def _train_in(cfg: TrainConfig, out, resume, allow_change: bool, progress: bool, dist: Distributed) -> TrainResult:
    """Open the run directory (rank 0 makes it, every rank learns where it is), then train in it."""
    run_dir, resuming, made_dir = open_run_dir(cfg, out, resume, dist)
    main = dist.is_main
    locked = began = False
    try:
        idle = contextlib.nullcontext()  # the other ranks neither lock nor log into the run directory
        with run_lock(run_dir) if main else idle, run_log(run_dir) if main else idle:
            locked = True  # the folder is ours: another run holding it is never cleaned away
            trainer = Trainer(cfg, dist=dist)
            try:
                evaluator = evaluator_for(trainer) if cfg.train.eval_kimg and main else None
                if cfg.train.tensorboard:
                    summary_writer()  # a missing package fails the set-up, not the first step
                began = True
                return _run(trainer, evaluator, run_dir, resuming, allow_change, progress)
            finally:
                trainer.close()
    finally:
        # The set-up failed (bad data, a device it lacks, no feature net): leave no empty run behind.
        if main and not resuming and locked and not began:
            discard_empty_run(run_dir, made_dir)


def open_run_dir(cfg: TrainConfig, out, resume, dist: Distributed) -> tuple[Path, bool, bool]:
    """(run directory, whether it resumes, whether this call made the folder), decided on rank 0."""

    def decide() -> str:
        if resume is not None and str(resume) != "auto":
            return f"{resume}\n1\n0"
        made = not Path(out).exists() if out is not None else True
        if str(resume) == "auto" and list_checkpoints(Path(out) / "checkpoints"):
            return f"{out}\n1\n0"
        if str(resume) == "auto" and Path(out).is_dir() and (Path(out) / "config.yaml").is_file():
            log.info("%s has no committed checkpoint yet: its run starts again from step 0", out)
            return f"{out}\n0\n0"
        return f"{new_run_dir(out, cfg.preset)}\n0\n{int(made)}"

    path, resuming, made = dist.from_main(decide).split("\n")
    return Path(path), resuming == "1", made == "1"


def discard_empty_run(run_dir: Path, made_dir: bool) -> None:
    """Remove what a run whose set-up failed left: its log.txt, and the folder if this call made
    it, so that the same `--out` can be used again once the input is fixed."""
    if {p.name for p in run_dir.iterdir()} <= {"log.txt", LOCK_NAME}:
        for name in ("log.txt", LOCK_NAME):
            (run_dir / name).unlink(missing_ok=True)
        if made_dir:
            run_dir.rmdir()


def resumed_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    if not run_dir.exists():
        raise CheckpointError(f"{run_dir}: no such run directory; check the path, or start a new run with --out DIR")
    if not (run_dir / "config.yaml").is_file():
        raise CheckpointError(f"{run_dir}: not a hetgan run directory (no config.yaml)")
    return with_absolute_paths(apply_overrides(load_yaml(run_dir / "config.yaml"), overrides))


def _run(trainer: Trainer, evaluator, run_dir: Path, resuming: bool, allow_change: bool, progress: bool) -> TrainResult:
    cfg, main = trainer.cfg, trainer.dist.is_main
    total_nimg = int(cfg.train.kimg * 1000)
    metrics = MetricsWriter(run_dir, enabled=main)  # rank 0 writes the run directory
    if resuming:
        restore(trainer, run_dir, allow_change)
        if trainer.nimg >= total_nimg and (run_dir / ARTIFACT_NAME).exists():
            return _finished_already(trainer, run_dir)
    monitor = _start(trainer, run_dir, metrics, evaluator)
    stop = StopSignal()
    bar = _progress_bar(trainer.nimg, total_nimg, progress)
    timer, logged_nimg = time.perf_counter(), trainer.nimg
    started, started_nimg = timer, trainer.nimg
    # Log lines go above the bar, not onto it; TensorBoard's events are flushed however the loop ends.
    with stop, bar, logging_redirect_tqdm(), contextlib.closing(metrics.board):
        while trainer.nimg < total_nimg and not stop.agreed(trainer.dist, trainer.step_count, cfg.train.log_interval):
            before = trainer.nimg
            result = trainer.step()
            bar.update(min(trainer.nimg, total_nimg) - bar.n)
            if trainer.step_count % cfg.train.log_interval == 0:
                elapsed, timer = time.perf_counter() - timer, time.perf_counter()
                img_s = cfg.train.log_interval * (trainer.nimg - before) / elapsed
                logged_nimg = trainer.nimg
                trainer.count_skipped()
                record = log_metrics(trainer, result.floats(), img_s, metrics, bar)
                if main:
                    monitor.check_record(record)
            maintain(trainer, run_dir, before, monitor, metrics)
            if monitor.alarms:
                bar.set_description(f"ALARM x{len(monitor.alarms)} (see log)")
        trainer.count_skipped()
        if trainer.nimg > logged_nimg:  # steps since the last log line (all of a short run's): their record
            img_s = (trainer.nimg - logged_nimg) / (time.perf_counter() - timer)
            record = log_metrics(trainer, result.floats(), img_s, metrics, bar)
            if main:
                monitor.check_record(record)
        stopped_by = stop.requested if stop.stopping else None  # as agreed: a later signal waits for the end
        if stopped_by:
            snapshot(trainer, run_dir)
            log.info("stopped by %s at step %d; checkpoint saved", stopped_by, trainer.step_count)
        else:  # a signal from here on waits for the final outputs: the run has trained all it was asked
            finish(trainer, run_dir)
    seconds, trained = time.perf_counter() - started, trainer.nimg - started_nimg
    return TrainResult(
        run_dir, trainer.step_count, trainer.nimg / 1000, stopped_by, trainer.nonfinite_total, main=main,
        img_per_s=trained / seconds if trained and seconds > 0 else None, last_eval=monitor.last_eval,
        alarms=tuple(monitor.alarms),
    )  # fmt: skip


def _finished_already(trainer: Trainer, run_dir: Path) -> TrainResult:
    """A resumed run at or past the kimg asked for: its config.yaml and outputs stay as they are."""
    cfg, main = trainer.cfg, trainer.dist.is_main
    log.info("%s is finished at %.1f kimg (train.kimg=%g): nothing to do", run_dir, trainer.nimg / 1000, cfg.train.kimg)
    return TrainResult(run_dir, trainer.step_count, trainer.nimg / 1000, None, trainer.nonfinite_total, True, main)


def _progress_bar(nimg: int, total_nimg: int, progress: bool) -> tqdm:
    """The bar on stderr, counted in whole images and shown scaled (12.3k/200k img): float kimg
    added up step by step showed round-off (10.240000000000007/60.0), and the last step's
    overshoot went past 100 %."""
    return tqdm(
        total=total_nimg,
        initial=min(nimg, total_nimg),
        unit="img",
        unit_scale=True,
        disable=not progress or None,
        dynamic_ncols=True,
    )


def _start(trainer: Trainer, run_dir: Path, metrics: MetricsWriter, evaluator) -> Monitor:
    """What a run, new or resumed, writes and says before its next step; the run's monitor."""
    cfg, main = trainer.cfg, trainer.dist.is_main
    metrics.truncate_after(trainer.step_count)  # records the run is about to redo (all, from step 0)
    metrics.board = Board(run_dir, cfg.train.tensorboard and main, trainer.step_count)
    if main:
        write_config(run_dir, cfg)
        write_machine(run_dir, trainer.device)
    log.info("run directory %s; %s", run_dir, describe(trainer))
    log.info("data %s", describe_data(trainer.data, cfg.data.spec))
    if warning := colour_warning(trainer.data):
        log.warning("%s", warning)
    monitor = Monitor(trainer, run_dir, evaluator)
    if trainer.step_count == 0 and main:
        save_grid(trainer, run_dir)
    return monitor


def describe(trainer: Trainer) -> str:
    n_g = sum(p.numel() for p in trainer.G.parameters())
    n_d = sum(p.numel() for p in trainer.D.parameters())
    ranks = f" ({trainer.dist.backend}, world size {trainer.dist.world})" if trainer.dist.active else ""
    return (
        f"device {trainer.device}{ranks}; G {n_g / 1e6:.2f}M params, D {n_d / 1e6:.2f}M params; "
        f"starting at step {trainer.step_count} ({trainer.nimg / 1000:.1f} kimg)"
    )


def restore(trainer: Trainer, run_dir: Path, allow_change: bool) -> None:
    """Load the newest good checkpoint: rank 0 picks (and verifies) it, every rank reads that one."""
    picked = {}

    def pick() -> str:
        picked["checkpoint"] = load_latest_checkpoint(run_dir / "checkpoints")
        return str(picked["checkpoint"][0])

    path = Path(trainer.dist.from_main(pick))
    _, tensors, meta = picked["checkpoint"] if picked else (path, *read_checkpoint(path))
    changed = config_differences(absolute_paths(with_defaults(meta["config"])), to_dict(trainer.cfg))
    if changed and not allow_change:
        raise CheckpointError(
            f"{path} was written with another config ({'; '.join(changed)}); resuming would not "
            "continue the same run. Restore the run's config.yaml, or pass --allow-config-change"
        )
    try:
        trainer.load_state(tensors, meta)
    except CheckpointError as e:  # say which checkpoint did not fit
        raise CheckpointError(f"{path}: {e}") from e
    log.info("resumed from %s (step %d, %.1f kimg)", path, trainer.step_count, trainer.nimg / 1000)


def with_defaults(saved: dict) -> dict:
    """A checkpoint's config with the fields it lacks at their defaults: a checkpoint written before
    a field existed ran as its default has it (a new field's default is the old behaviour)."""
    filled = to_dict(TrainConfig())
    for key, value in saved.items():
        both_sections = isinstance(value, dict) and isinstance(filled.get(key), dict)
        filled[key] = {**filled[key], **value} if both_sections else value
    return filled


def config_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(saved) | set(current)):
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, name + ".")
        elif a != b and name not in RESUMABLE_FIELDS:
            diffs.append(f"{name}: checkpoint {a!r}, now {b!r}")
    return diffs


def log_metrics(trainer: Trainer, losses: dict, img_s: float, metrics: MetricsWriter, bar) -> dict:
    losses = trainer.dist.mean_floats(losses)  # every rank's losses: the global batch's
    record = {
        "step": trainer.step_count,
        "kimg": round(trainer.nimg / 1000, 3),
        **losses,
        "img_per_s": round(img_s, 1),
        "nonfinite_total": trainer.nonfinite_total,
    }
    metrics.write(record)
    shown = {name: f"{losses[key]:.3f}" for name, key in (("d", "loss_d"), ("g", "loss_g")) if key in losses}
    bar.set_postfix(img_s=f"{img_s:.0f}", **shown)  # a student distilled without D has no loss_d
    return record


def crossed(before: int, after: int, interval_kimg: float) -> bool:
    interval = max(int(interval_kimg * 1000), 1)
    return before // interval != after // interval


def maintain(trainer: Trainer, run_dir: Path, before: int, monitor: Monitor, metrics: MetricsWriter) -> None:
    t, main = trainer.cfg.train, trainer.dist.is_main
    if main and crossed(before, trainer.nimg, t.grid_kimg):
        samples = save_grid(trainer, run_dir)
        monitor.check_samples(samples)
        metrics.board.grid(samples, trainer.step_count)
    if crossed(before, trainer.nimg, t.snapshot_kimg):
        snapshot(trainer, run_dir)
    if main and t.eval_kimg and crossed(before, trainer.nimg, t.eval_kimg):
        record = monitor.evaluate()
        metrics.write(record)
        log.info("eval at %.1f kimg: %s", record["kimg"], summary(record))


def summary(record: dict) -> str:
    keys = (
        "fid",
        "precision",
        "recall",
        "coverage",
        "classes_covered",
        "modes_captured",
        "high_quality",
        "reverse_kl",
    )
    return ", ".join(f"{k} {record[k]:.4g}" for k in keys if k in record)


def save_grid(trainer: Trainer, run_dir: Path, name: str | None = None) -> torch.Tensor:
    """Samples of G_ema on the run's fixed z, so grids over time are comparable."""
    cfg = trainer.cfg
    G = trainer.recalibrated_G_ema()
    n = 2500 if isinstance(trainer.data, Mixture) else cfg.train.grid_size
    K = cfg.model.n_classes
    per_class, y = None, None
    if K and cfg.data.clusters:  # a self-conditioned grid: its clusters as G draws them unlabelled
        y = classes_in_turn(n, K, cfg.data.class_weights)
    elif K:  # a conditional grid: a row per class
        per_class = max(1, n // K)
        n = K * per_class
        y = torch.arange(n) // per_class
    z = torch.randn(n, cfg.model.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 2)).to(trainer.z_device)
    with torch.no_grad():
        samples = (G(z, y.to(trainer.z_device)) if K else G(z)).float().cpu()
    modes = trainer.data.modes if isinstance(trainer.data, Mixture) else None
    path = run_dir / "samples" / (name or f"step-{trainer.step_count:09d}.png")
    write_samples(samples, path, modes, ncol=per_class)
    return samples


def snapshot(trainer: Trainer, run_dir: Path) -> None:
    """Commit a checkpoint of the current step; every rank calls it, rank 0 writes."""
    tensors, meta = trainer.saved_state()
    if trainer.dist.is_main:
        path = save_checkpoint(
            run_dir / "checkpoints", trainer.step_count, tensors, meta, keep=trainer.cfg.train.keep_checkpoints
        )
        log.info("step %d (%.1f kimg): checkpoint %s", trainer.step_count, trainer.nimg / 1000, path.name)
    trainer.saved_step = trainer.step_count


def finish(trainer: Trainer, run_dir: Path) -> None:
    """The final checkpoint, grid, plots and, last, the generator artifact: a run directory with
    an artifact is finished. One killed before that resumes into `finish` again (no steps left)."""
    if trainer.saved_step != trainer.step_count:
        snapshot(trainer, run_dir)
    if trainer.dist.is_main:
        save_grid(trainer, run_dir, "final.png")
        make_plots(run_dir)
        artifact = save_generator(
            trainer.recalibrated_G_ema(), trainer.cfg, run_dir / ARTIFACT_NAME, run_dir.name, recalibrated=True
        )
        log.info(
            "done: %d steps, %.1f kimg, %d non-finite steps skipped; generator %s",
            trainer.step_count,
            trainer.nimg / 1000,
            trainer.nonfinite_total,
            artifact,
        )
    trainer.dist.barrier()  # the run is finished for every rank once its outputs are written


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self.stopping = False  # what the ranks last agreed (distributed.py): stop after this step
        self._previous: dict = {}

    def agreed(self, dist: Distributed, step: int = 0, every: int = 1) -> bool:
        """Whether to stop now: on every rank alike, once a signal reached any of them. The answer
        is the collective's alone: a signal landing on this rank after it (the handler runs between
        any two bytecodes) waits for the next call, or the ranks would part ways. In a process
        group the ranks agree only at steps that are multiples of `every` (the loop passes
        train.log_interval): each agreement is a host all-reduce, a round trip between the machines
        (benchmarks/scaling_model.py prices it), so a signal stops the run within `every` steps."""
        if dist.active and step % every:
            return False
        requested = self.requested
        self.stopping = dist.any_host(requested is not None)
        if self.stopping and requested is None:
            self.requested = "a signal to another rank"
        return self.stopping

    def _handle(self, signum, frame) -> None:
        self.requested = signal.Signals(signum).name
        signal.signal(signum, self._previous[signum])  # a second signal acts as usual

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
