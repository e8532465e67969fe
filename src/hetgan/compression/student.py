"""One student: the teacher run's G pruned (prune.py), then distilled from the teacher
(hetgan.training.distill) as an ordinary hetgan run.

`prune_and_distil(run, out, prune=0.5)` writes OUT/:
  init.safetensors       the pruned teacher, the student's starting weights
  student/               the student's run directory (an ordinary hetgan run: resumable, with
                         checkpoints, metrics, grids and its generator.safetensors)
  compress.json          teacher, ratio, widths and MACs of teacher and student
The student's artifact is an ordinary generator artifact: its widths are in its config
(`model.g_widths`), so load_generator, sample, eval, export, quantize, serve and report take it.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import save as save_safetensors

from hetgan.artifact import ARTIFACT_NAME, load_torch_generator
from hetgan.compression.prune import macs, prune_generator, ratio_for_width, widths_of
from hetgan.config import DistillConfig, TrainConfig, apply_overrides
from hetgan.errors import ConfigError, TrainingStopped
from hetgan.fileio import atomic_write_bytes, strict_json
from hetgan.training.checkpoint import list_checkpoints
from hetgan.training.loop import resumed_config, train

log = logging.getLogger("hetgan")

STUDENT = "student"


@dataclass
class Student:
    """What `prune_and_distil` made: the student's run and what it costs against its teacher."""

    out: Path
    ratio: float
    widths: list[int]
    macs: int
    teacher_macs: int
    scratch: bool = False
    info: dict = field(default_factory=dict)
    quality: dict | None = None  # the student's score against the teacher's, where measured (compress.quality_rounds)

    @property
    def run_dir(self) -> Path:
        return self.out / STUDENT

    @property
    def artifact(self) -> Path:
        return self.run_dir / ARTIFACT_NAME

    def summary(self) -> str:
        how = "trained from scratch" if self.scratch else "pruned and distilled"
        return (
            f"student ({how}): widths {self.widths}, {self.macs / 1e6:.2f}M MACs per sample, "
            f"{self.teacher_macs / self.macs:.2f}x fewer than the teacher's {self.teacher_macs / 1e6:.2f}M\n"
            + (f"  quality: {self.quality['summary']}\n" if self.quality else "")
            + f"  generator: {self.artifact}\n  run directory: {self.run_dir}"
        )


def prune_and_distil(
    run: str | Path,
    out: str | Path,
    prune: float | None = None,
    width: int | None = None,
    importance: str = "magnitude",
    kimg: float = 20.0,
    scratch: bool = False,
    weights: DistillConfig | None = None,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> Student:
    """Prune the teacher run's G_ema by `prune` (the share of channels removed) or to `width`, then
    distil it for `kimg` thousand images. With `scratch`, the same architecture is trained as an
    ordinary GAN from random weights instead (the baseline distillation is measured against).
    Calling it again with the same arguments continues an interrupted compression exactly."""
    run, out = Path(run), Path(out)
    if (prune is None) == (width is None):
        raise ConfigError("give the student's size one way: --prune RATIO (share of channels removed) or --width W")
    teacher_cfg = resumed_config(run, [])
    teacher = load_torch_generator(run)
    ratio = prune if prune is not None else ratio_for_width(teacher_cfg, width)
    pruned = prune_generator(teacher.net, teacher_cfg, ratio, importance)
    arch = teacher_cfg.model.arch
    widths = widths_of(pruned, arch)
    out.mkdir(parents=True, exist_ok=True)
    init = out / "init.safetensors"
    if not scratch and not list_checkpoints(out / STUDENT / "checkpoints"):  # a started student has its own
        atomic_write_bytes(init, save_safetensors({k: v.contiguous() for k, v in pruned.state_dict().items()}))
    cfg = student_config(teacher_cfg, run, widths, kimg, None if scratch else init, weights or DistillConfig())
    student = Student(
        out,
        ratio,
        widths,
        macs(pruned, teacher_cfg.model.z_dim),
        macs(teacher.net, teacher_cfg.model.z_dim),
        scratch,
        {"teacher": str(run.resolve()), "importance": importance, "teacher_widths": widths_of(teacher.net, arch)},
    )
    atomic_write_bytes(out / "compress.json", strict_json(record(student), indent=1).encode())
    cfg = apply_overrides(cfg, overrides or [])
    result = train(cfg, out=student.run_dir, resume="auto", progress=progress)
    if result.stopped_by:  # a half-trained student must not be scored, exported or searched on as trained
        raise TrainingStopped(
            f"{student.run_dir}: the student's training was stopped by {result.stopped_by} at step "
            f"{result.steps}, its checkpoint saved; run the same `hetgan compress` command again to continue it"
        )
    return student


def student_config(
    teacher: TrainConfig, run: Path, widths: list[int], kimg: float, init: Path | None, weights: DistillConfig
) -> TrainConfig:
    """The teacher's config with the student's widths and schedule; distilled from `run`, starting
    from `init`, or (no `init`) an ordinary GAN run from random weights."""
    cfg = copy.deepcopy(teacher)
    cfg.preset = f"{teacher.preset}-student"
    cfg.model.g_widths = list(widths)
    cfg.train.kimg = kimg
    cfg.train.snapshot_kimg = min(teacher.train.snapshot_kimg, kimg / 4)
    cfg.train.grid_kimg = min(teacher.train.grid_kimg, kimg / 4)
    cfg.train.eval_kimg = 0.0
    cfg.distill = DistillConfig()  # from scratch: an ordinary GAN run
    if init is not None:
        cfg.distill = dataclasses.replace(weights, teacher=str(run.resolve()), init=str(init.resolve()))
    return cfg.validate()


def record(student: Student) -> dict:
    return {
        "ratio": student.ratio,
        "widths": student.widths,
        "macs": student.macs,
        "teacher_macs": student.teacher_macs,
        "mac_reduction": student.teacher_macs / student.macs,
        "scratch": student.scratch,
        **student.info,
    }


__all__ = ["Student", "prune_and_distil", "student_config"]
