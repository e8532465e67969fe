"""`hetgan.load_generator`: one call opens a generator from any of hetgan's files, on any backend.

    G = hetgan.load_generator("runs/00000-dcgan_mnist")                  # eager torch
    G = hetgan.load_generator("g.onnx")                                  # ONNX Runtime
    G = hetgan.load_generator("runs/00000-dcgan_mnist", backend="openvino")  # exported in memory
    img = G.sample(16, seed=0)                                           # the same z on every backend

The rest of hetgan (sample, eval, serve, report) takes what this returns and never asks which
backend runs it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from hetgan.artifact import load_torch_generator
from hetgan.deploy.export import onnx_bytes
from hetgan.deploy.runtimes import BACKENDS, RUNTIMES, RuntimeGenerator, file_backend
from hetgan.errors import CheckpointError, ConfigError
from hetgan.generator import SeededGenerator
from hetgan.pretrained import resolve_source


def load_generator(
    path: str | Path,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    threads: int | None = None,
    streams: int = 1,
) -> SeededGenerator:
    """Load a generator to sample from, whatever runs it.

    `path`: a run directory, a `generator.safetensors` artifact, an exported `.onnx` file, an
    OpenVINO IR `.xml` (hetgan export/quantize), or the name of a generator shipped in the
    package ("mnist", "mnist-conditional", "stacked-mnist": `hetgan pretrained`) where no file or folder of that
    name exists. `backend`: torch, onnxruntime, openvino or tensorrt; by default the one the file
    is for (torch for a run or a .safetensors). A run or artifact asked for on another backend is
    exported in memory first, with the same check as `hetgan export`. Every backend gives the same
    samples for a seed within its tolerance.

    For a run directory that has not finished (no artifact yet), G_ema comes from its newest
    valid checkpoint. `device`: a name as `--device` takes it (auto, cpu, cuda[:i], mps, xpu).
    `threads`: CPU threads of an inference runtime (default: the cores this process may use);
    `streams`: how many calls it may run at once from as many threads, sharing those threads.

    Returns:
        A `SeededGenerator`: `sample(n, seed)` -> [n, C, H, W] in [-1, 1] (or [n, 2] points),
        `generate(z, y)`, `interpolate`, `config`, `n_classes`, `class_names`, `backend`.

    Raises:
        CheckpointError: a missing, damaged or foreign file, with what to pass instead.

    Example:
        >>> G = hetgan.load_generator("runs/00000-dcgan_mnist")
        >>> G.sample(16, seed=0).shape
        torch.Size([16, 1, 32, 32])
    """
    path = resolve_source(path)
    backend = backend or file_backend(path)
    if backend != "torch":
        return load_runtime(path, backend, str(device), threads, streams)
    if file_backend(path) != "torch":
        raise CheckpointError(
            f"{path}: an exported model runs on onnxruntime or openvino, not torch; pass --backend "
            "onnxruntime|openvino, or the run's generator.safetensors for torch"
        )
    return load_torch_generator(path, device)


def generator_from(
    source: str | Path | SeededGenerator,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    threads: int | None = None,
) -> SeededGenerator:
    """`source` itself if it is a loaded generator, else `load_generator(source, ...)`: what every
    public function that takes a generator takes."""
    if isinstance(source, SeededGenerator):
        return source
    return load_generator(source, device=device, backend=backend, threads=threads)


def load_runtime(
    path: Path, backend: str, device: str = "cpu", threads: int | None = None, streams: int = 1
) -> RuntimeGenerator:
    """A model file, or a run / artifact exported in memory, on an inference runtime."""
    if backend not in RUNTIMES:
        raise ConfigError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    kind = file_backend(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory; pass a run directory, a .safetensors, .onnx or .xml")
    where = str(path)
    model: bytes | Path = path
    if kind == "torch":  # a run or an artifact: export it (checked) without writing a file
        model = onnx_bytes(load_torch_generator(path), "openvino" if backend == "openvino" else "onnxruntime")
    elif kind == "openvino" and backend != "openvino":
        raise ConfigError(f"{path}: an OpenVINO IR runs on the openvino backend only, not {backend}")
    kw = {"tensorrt": backend == "tensorrt", "cache_dir": path.parent / f"{path.stem}.trt-cache"}
    return RUNTIMES[backend](model, where, device=device, threads=threads, streams=streams, **kw)
