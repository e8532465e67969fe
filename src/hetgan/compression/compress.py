"""`hetgan.compress`: a smaller student of a trained generator, of a given size or the smallest
that meets a time per call (`hetgan compress`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from hetgan.artifact import ARTIFACT_NAME
from hetgan.compression.search import DEFAULT_RATIOS, Candidate, fid_score, search
from hetgan.compression.student import Student, prune_and_distil, record
from hetgan.config import DistillConfig
from hetgan.errors import ConfigError, HetganError
from hetgan.fileio import atomic_write_bytes, strict_json

log = logging.getLogger("hetgan")


def compress(
    run: str | Path,
    out: str | Path,
    prune: float | None = None,
    width: int | None = None,
    target_ms: float | None = None,
    importance: str = "magnitude",
    kimg: float = 20.0,
    scratch: bool = False,
    weights: DistillConfig | None = None,
    backend: str = "onnxruntime",
    batch: int = 1,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    max_increase: float | None = 0.10,
    n: int = 5000,
    progress: bool = True,
    search_anyway: bool = False,
    budget_minutes: float = 15.0,
) -> Student | Candidate:
    """Compress the teacher run `run` into OUT (`hetgan compress`).

    Give the student's size one way:
        prune: the share of G's channels to remove, in (0, 1); or
        width: the student's model.width; or
        target_ms: search the prune `ratios` for the smallest student that runs in `target_ms`
            per call of `batch` samples on `backend` and keeps its FID within `max_increase` of
            the teacher's (scored on `n` samples). A teacher that already runs within `target_ms`
            stops the search before any student is distilled, unless `search_anyway`.

    Args:
        importance: how channels are ranked for pruning: magnitude or bn_scale.
        kimg: distillation length, in thousands of images: for `prune`/`width`, one step of it.
        scratch: train the student's architecture from random weights instead (the baseline),
            for `kimg` exactly.
        weights: the distillation terms' weights (`DistillConfig`: pixel, feature, adversarial).
        max_increase: the most the student's FID may exceed the teacher's (0.10: 10 %). With
            `prune`/`width`, distillation goes on `kimg` at a time until the student is within it
            or `budget_minutes` would run out (None: distil `kimg` once, unmeasured).
        n: samples per FID.
        budget_minutes: the time distillation and its scoring may take, in minutes.

    Returns:
        `Student` (its `.artifact`, `.run_dir`, MACs against the teacher's, `.summary()`), or for
        `target_ms` the chosen search `Candidate` (its artifact copied to OUT/generator.safetensors).

    Raises:
        ConfigError: sizes given two ways or none, a ratio outside (0, 1), a width wider than the
            teacher's; CheckpointError: a teacher run without a generator.

    Example:
        >>> student = hetgan.compress("runs/00000-dcgan_mnist", "runs/small", prune=0.5)
        >>> G = hetgan.load_generator(student.artifact)
    """
    if target_ms is None:
        if scratch or max_increase is None:  # the baseline trains for a fixed length, to be compared at it
            return prune_and_distil(run, out, prune, width, importance, kimg, scratch, weights, progress=progress)
        return distil_within(
            run, out, prune, width, importance, kimg, weights, max_increase, budget_minutes, n, progress
        )  # fmt: skip
    if prune is not None or width is not None or scratch:
        raise ConfigError("--target-ms searches over --ratios; it takes no --prune, --width or --scratch")
    return search(
        run, out, target_ms, backend, batch, ratios, kimg, max_increase, n, weights, progress,
        importance=importance, search_anyway=search_anyway,
    )  # fmt: skip


def distil_within(
    run: str | Path,
    out: str | Path,
    prune: float | None,
    width: int | None,
    importance: str,
    kimg: float,
    weights: DistillConfig | None,
    max_increase: float,
    budget_minutes: float,
    n: int,
    progress: bool,
) -> Student:
    """Distil `kimg` at a time until the student's FID (2-D data: 1 - its high-quality share, on `n`
    samples) is within `max_increase` of the teacher's, or `budget_minutes` would run out; each
    step continues the last exactly. Where the data has no feature network the quality cannot be
    measured: the student is distilled once, and its summary says why."""
    try:
        teacher = fid_score(Path(run) / ARTIFACT_NAME, n)
    except HetganError as e:
        student = prune_and_distil(run, out, prune, width, importance, kimg, False, weights, progress=progress)
        student.quality = {"measured": False, "summary": f"not measured ({e}); distilled {kimg:g} kimg"}
        return student
    bound, started, total = teacher * (1 + max_increase), time.monotonic(), kimg
    while True:
        step_started = time.monotonic()
        student = prune_and_distil(run, out, prune, width, importance, total, False, weights, progress=progress)
        score = fid_score(student.artifact, n)
        within, spent = score <= bound, (time.monotonic() - started) / 60
        log.info("distilled %g kimg: student %.4g, teacher %.4g (bound %.4g)", total, score, teacher, bound)
        step = (time.monotonic() - step_started) / 60
        if within or spent + step > budget_minutes:
            break
        total += kimg
    verdict = "within" if within else f"NOT within: the {budget_minutes:g}-minute budget ran out (--budget-minutes)"
    student.quality = {
        "measured": True, "teacher": teacher, "student": score, "increase": score / teacher - 1,
        "max_increase": max_increase, "kimg": total, "within": within, "n": n,
        "summary": (
            f"score {score:.4g} against the teacher's {teacher:.4g} ({score / teacher - 1:+.1%}) after {total:g} kimg "
            f"of distillation, {spent:.1f} min; {verdict} the bound of {max_increase:.0%}"
        ),
    }  # fmt: skip
    info = record(student) | {"quality": student.quality}
    atomic_write_bytes(Path(out) / "compress.json", strict_json(info, indent=1).encode())
    return student
