"""`hetgan.compress`: a smaller student of a trained generator, of a given size or the smallest
that meets a time per call (`hetgan compress`)."""

from __future__ import annotations

from pathlib import Path

from hetgan.compression.search import DEFAULT_RATIOS, Candidate, search
from hetgan.compression.student import Student, prune_and_distil
from hetgan.config import DistillConfig
from hetgan.errors import ConfigError


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
    max_increase: float = 0.10,
    n: int = 5000,
    progress: bool = True,
    search_anyway: bool = False,
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
        kimg: distillation length, in thousands of images.
        scratch: train the student's architecture from random weights instead (the baseline).
        weights: the distillation terms' weights (`DistillConfig`: pixel, feature, adversarial).

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
        return prune_and_distil(run, out, prune, width, importance, kimg, scratch, weights, progress=progress)
    if prune is not None or width is not None or scratch:
        raise ConfigError("--target-ms searches over --ratios; it takes no --prune, --width or --scratch")
    return search(
        run, out, target_ms, backend, batch, ratios, kimg, max_increase, n, weights, progress,
        importance=importance, search_anyway=search_anyway,
    )  # fmt: skip
