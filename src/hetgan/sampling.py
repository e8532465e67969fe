"""`hetgan.sample` and `hetgan.interpolate`: samples of a trained generator written to files.

    hetgan.sample("runs/00000-dcgan_mnist", "grid.png", n=64, seed=0)     # a grid
    hetgan.sample("g.onnx", "digits/", n=1000)                            # a folder of PNGs
    hetgan.sample(run, "sevens.npz", n=100, classes=["7"])                # a conditional G
    hetgan.interpolate(run, "walk.gif", 0, 1, frames=16)                  # a latent walk

The files themselves are made by hetgan.sample_files; what a seed draws, by the generator
(hetgan.generator.SeededGenerator), so the same arguments write the same samples on every backend.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from hetgan.data import Mixture, load_data
from hetgan.deploy.load import generator_from
from hetgan.errors import HetganError
from hetgan.fileio import output_path
from hetgan.generator import SeededGenerator
from hetgan.sample_files import check_memory, numbered_pngs, output_form, sample_uint8, write_samples, write_walk

Source = str | Path | SeededGenerator  # a run directory, an artifact or exported file, or a loaded generator


@dataclass(frozen=True)
class Written:
    """What `sample` wrote: `n` samples to `path`, numbered from `start` in a folder."""

    path: Path
    n: int
    start: int = 0
    by_class: bool = False

    def summary(self) -> str:
        layout = " by class" if self.by_class else ""
        return f"wrote {self.n} samples to {self.path}{layout}" + (
            f" (numbered from {self.start})" if self.start else ""
        )


def sample(
    source: Source,
    out: str | Path,
    n: int | None = None,
    seed: int = 0,
    truncation: float | None = None,
    classes: Sequence[str | int] | None = None,
    per_class: int | None = None,
    append: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    backend: str | None = None,
    threads: int | None = None,
) -> Written:
    """Write `n` samples of a generator to `out` (`hetgan sample`); returns what was written
    (`.path`, `.n`, `.summary()`).

    Args:
        source: a run directory, a generator.safetensors, an exported .onnx/.xml, or a generator
            from `hetgan.load_generator`.
        out: FILE.png (a grid, or a scatter plot for 2-D data), FILE.npz (uint8 images or float
            points), or DIR/ (one PNG per sample, by class for a conditional generator).
        n: how many (default 64).
        seed: which (the same seed draws the same z on every device and backend).
        truncation: the truncation psi in (0, 1]: typical samples over varied ones.
        classes: conditional generators: these classes (names or indices) in turn.
        per_class: conditional generators: this many of every class (or of each of `classes`),
            a grid row per class; that makes per_class x classes samples, so `n` is refused with it.
        append: a DIR/ that already holds samples: number on after them.
        overwrite: replace an existing FILE.png/.npz, or the samples a DIR/ already holds
            (without it, either is refused).
        device: where G runs (torch); `backend` and `threads`: what runs it (see `hetgan.load_generator`).
        backend: torch, onnxruntime, openvino or tensorrt (default: the file's).
        threads: CPU threads of an inference runtime.

    Raises:
        HetganError: a bad count, path, class, or a folder that already holds files.

    Example:
        >>> hetgan.sample("runs/00000-dcgan_mnist", "grid.png", n=16, seed=3)
    """
    if per_class is not None and n is not None:
        raise HetganError(
            f"--n {n} and --per-class {per_class} both say how many samples: --per-class N writes N of every "
            "class (or of each --class); pass one of them"
        )
    n = 64 if n is None else n
    if n < 1:
        raise HetganError(f"--n must be at least 1, got {n}")
    if per_class is not None and per_class < 1:
        raise HetganError(f"--per-class must be at least 1, got {per_class}")
    form = output_form(output_path(out, "--out", "samples.png", overwrite), str(out))  # before the sampling
    G = generator_from(source, device, backend, threads)
    n, labels = requested_labels(G, n, classes, per_class)
    names = G.class_names if labels is not None else None
    start = folder_start(Path(out), append, overwrite, names) if form == "folder" else 0
    check_memory(G, n, form)
    modes = None
    if len(G.shape) == 1:
        samples = G.sample(n, seed=seed, truncation=truncation, labels=labels)
        data = load_data(G.config.data)
        modes = data.modes if isinstance(data, Mixture) else None
    else:  # the same samples as G.sample, a quarter of the memory
        samples = sample_uint8(G, n, seed, truncation, labels)
    y = None if labels is None else labels.numpy()
    path = write_samples(samples, str(out), modes, start=start, ncol=per_class, labels=y, class_names=names)
    return Written(path, n, start, by_class=labels is not None and form == "folder")


def interpolate(
    source: Source,
    out: str | Path,
    seed_a: int,
    seed_b: int,
    frames: int = 16,
    truncation: float | None = None,
    label: str | int | None = None,
    device: str = "cpu",
    backend: str | None = None,
    threads: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a latent walk from seed_a's sample to seed_b's (`hetgan sample --interpolate A B`).

    Args:
        out: FILE.gif (an animation) or FILE.png (a strip of `frames` images).
        seed_a: the seed of the first frame.
        seed_b: the seed of the last frame.
        frames: how many images, both ends included.
        label: conditional generators: the one class to walk in (default the first).

    The other arguments are `hetgan.sample`'s.

    Example:
        >>> hetgan.interpolate("runs/00000-dcgan_mnist", "walk.gif", 0, 1, frames=16)
    """
    out = output_path(out, "--out", "walk.gif", overwrite)
    if out.suffix not in (".gif", ".png"):
        raise HetganError(f"--out {out}: a latent walk is FILE.gif (an animation) or FILE.png (a strip)")
    G = generator_from(source, device, backend, threads)
    if len(G.shape) != 3:
        raise HetganError("--interpolate draws images; this generator makes 2-D points")
    walk = G.interpolate(seed_a, seed_b, frames=frames, truncation=truncation, label=label)
    return write_walk(walk, out)


def requested_labels(
    G: SeededGenerator, n: int, classes: Sequence[str | int] | None = None, per_class: int | None = None
) -> tuple[int, torch.Tensor | None]:
    """(n, y [n] or None): `per_class` of every class (or of each of `classes`), class by class;
    `classes` alone: n samples, the given classes in turn; neither: the classes as G draws them
    unlabelled (in turn, or a self-conditioned G's over its clusters' shares), or no labels
    (unconditional, which refuses `classes` and `per_class`)."""
    if not G.n_classes:
        if classes or per_class:
            raise HetganError(
                "--class and --per-class need a conditional generator (trained with model.conditional=true)"
            )
        return n, None
    if not classes and not per_class:  # as G draws unlabelled: in turn, or over its clusters' shares
        return n, G.labels(n)
    chosen = [G.class_index(c) for c in classes] if classes else list(range(G.n_classes))
    if per_class:
        return len(chosen) * per_class, torch.tensor(chosen).repeat_interleave(per_class)
    return n, torch.tensor(chosen)[torch.arange(n) % len(chosen)]


def folder_start(folder: Path, append: bool, overwrite: bool, classes: list[str] | None = None) -> int:
    """The first number for samples written into `folder` (or, by class, into its `classes`
    subfolders): 0 for a new or empty one; after the last sample already there with `append`; 0
    after removing them with `overwrite`. A folder that holds anything else, or samples without
    either flag, is refused: nothing is overwritten silently."""
    if append and overwrite:
        raise HetganError("--append and --overwrite exclude each other: add after the samples, or replace them")
    if not folder.is_dir():
        return 0
    places = [folder / name for name in classes] if classes else [folder]
    samples = [p for place in places if place.is_dir() for p in numbered_pngs(place)]
    others = [p for p in folder.iterdir() if p not in samples and p not in places]
    if classes:  # and inside the class folders
        others += [p for place in places if place.is_dir() for p in place.iterdir() if p not in samples]
    if others and not append:
        raise HetganError(
            f"--out {folder}/: it holds {len(others)} other files (e.g. {others[0].name}); pick a new folder"
        )
    if not samples:
        return 0
    if append:
        return max(int(p.stem) for p in samples) + 1
    if overwrite:
        for p in samples:
            p.unlink()
        return 0
    raise HetganError(
        f"--out {folder}/: it already holds {len(samples)} samples; pass --append to add after them "
        "(numbering goes on) or --overwrite to replace them"
    )
