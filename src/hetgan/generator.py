"""The interface every generator offers, whatever runs it: seeded `sample(n, seed)`.

The torch generator of a run (hetgan.artifact.TorchGenerator) and the inference runtimes'
(hetgan.deploy.runtimes: ONNX Runtime, OpenVINO) subclass `SeededGenerator` and implement one
method, `_generate(z, y)`; everything else here (the seeded latent draw, class labels by index or
name, batching, truncation, interpolation) is shared, so a seed gives the same z on every device
and backend:

    G = hetgan.load_generator("runs/00000-dcgan_mnist")   # a SeededGenerator
    img = G.sample(16, seed=0)                            # [16, C, H, W] in [-1, 1]
    img = G.sample(16, seed=0, labels="7")                # a conditional G: sixteen 7s
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from hetgan.config import TrainConfig
from hetgan.errors import HetganError

UNCONDITIONAL = "this generator is unconditional: it takes no class labels (model.conditional=false)"


class SeededGenerator:
    """Seeded sampling shared by every generator, whatever runs it (torch here, ONNX Runtime and
    OpenVINO in hetgan.deploy): z is drawn on the CPU from the seed, batch by batch through
    `generate`, so a seed gives the same z on every device and backend.

    A conditional generator (model.conditional) also takes class labels y: `labels=` of `sample`
    names them by index or by class name; without it the classes take turns (0, 1, ..., K-1, 0, ...),
    or a self-conditioned generator's clusters come in proportion to their shares of the data.

    A subclass sets `config`, `z_dim`, `shape` ((C, H, W) or (2,)) and implements `generate`."""

    config: TrainConfig
    z_dim: int
    shape: tuple[int, ...]
    backend = "torch"
    precision = "fp32"
    run_id: str | None = None  # the training run's directory name, where known

    def generate(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """z [B, z_dim] float32 (and y [B] int64 class indices, for a conditional generator: by
        default the classes in turn) on the CPU -> samples [B, *shape] float32 on the CPU."""
        if y is None:
            y = self.labels(len(z))
        elif not self.n_classes:
            raise HetganError(UNCONDITIONAL)
        elif y.shape != (len(z),) or y.dtype != torch.int64 or not 0 <= int(y.min()) <= int(y.max()) < self.n_classes:
            raise HetganError(f"y must be int64 class indices [{len(z)}] in 0..{self.n_classes - 1}")
        return self._generate(z, y)

    def _generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """`generate` with y given exactly when the generator is conditional."""
        raise NotImplementedError

    @property
    def n_classes(self) -> int:
        """The number of classes a conditional generator takes; 0 for an unconditional one."""
        return self.config.model.n_classes if self.config.model.conditional else 0

    @property
    def class_names(self) -> list[str]:
        """The name of each class index ([] for an unconditional generator)."""
        return list(self.config.data.class_names) if self.n_classes else []

    def labels(self, n: int, labels=None) -> torch.Tensor | None:
        """y [n] int64 for `labels`: one class or a sequence of n, each an index or a class name;
        None = the classes in turn (0, 1, ..., K-1, 0, ...), or, for a self-conditioned generator,
        over its clusters' shares of the data (`classes_in_turn`). None for an unconditional
        generator, which takes no labels (asking it for some is an error)."""
        if not self.n_classes:
            if labels is not None:
                raise HetganError(UNCONDITIONAL)
            return None
        if labels is None:
            return classes_in_turn(n, self.n_classes, self.config.data.class_weights)
        if isinstance(labels, (str, int)) or (torch.is_tensor(labels) and labels.ndim == 0):
            return torch.full((n,), self.class_index(labels), dtype=torch.int64)
        y = torch.tensor([self.class_index(label) for label in labels], dtype=torch.int64)
        if len(y) != n:
            raise HetganError(f"{len(y)} labels for {n} samples; give one label, or one per sample")
        return y

    def class_index(self, label) -> int:
        """A class's index from its index or its name ("7", "cat"): a name first, then an index."""
        names = self.class_names
        if isinstance(label, str) and label in names:
            return names.index(label)
        try:
            index = int(label)
        except (TypeError, ValueError):
            index = -1
        if not 0 <= index < self.n_classes or (isinstance(label, float) and label != index):
            raise HetganError(
                f"unknown class {label!r}: this generator has {self.n_classes} classes, "
                f"indices 0..{self.n_classes - 1} named {', '.join(names[:20])}{', ...' if len(names) > 20 else ''}"
            )
        return index

    def latent(self, n: int, seed: int = 0, truncation: float | None = None) -> torch.Tensor:
        """z [n, z_dim] for `seed`, drawn on the CPU (the same on every device and backend).
        `truncation` psi in (0, 1] scales z toward its mean 0: the truncation trick for a z-space
        GAN, trading variety for typical samples (psi 1 or None: z as drawn)."""
        if truncation is not None and not 0 < truncation <= 1:
            raise HetganError(f"truncation must be in (0, 1], got {truncation}")
        z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed))
        return z if truncation is None or truncation == 1 else z * truncation

    @torch.no_grad()
    def sample(
        self, n: int, seed: int = 0, batch_size: int = 256, truncation: float | None = None, labels=None
    ) -> torch.Tensor:
        """n samples [n, *shape] (images in [-1, 1], points unbounded), on the CPU; of the classes
        `labels` (conditional generators: see `labels`).

        z is drawn on the CPU from `seed`, so a seed gives the same z on every device.
        """
        out = torch.empty(n, *self.shape)  # filled batch by batch: no second copy to concatenate
        for i, batch in self.sample_batches(n, seed, batch_size, truncation, labels):
            out[i : i + len(batch)] = batch
        return out

    @torch.no_grad()
    def sample_batches(
        self, n: int, seed: int = 0, batch_size: int = 256, truncation: float | None = None, labels=None
    ) -> Iterator[tuple[int, torch.Tensor]]:
        """`sample(n, seed)` as (index of the first, batch) pairs, for callers that convert or
        write each batch instead of holding n float samples: the same z and the same numbers."""
        z, y = self.latent(n, seed, truncation), self.labels(n, labels)
        for i in range(0, n, batch_size):
            yield i, self.generate(z[i : i + batch_size], None if y is None else y[i : i + batch_size])

    @torch.no_grad()
    def interpolate(
        self, seed_a: int, seed_b: int, frames: int = 8, truncation: float | None = None, label=None
    ) -> torch.Tensor:
        """[frames, *shape]: from seed_a's first sample to seed_b's, along the great circle between
        their z (spherical interpolation keeps the norm a Gaussian z has; a straight line between
        two draws would pass through improbably short codes); all of class `label` (conditional
        generators; default the first class)."""
        if frames < 2:
            raise HetganError(f"an interpolation needs at least 2 frames, got {frames}")
        a, b = (self.latent(1, seed, truncation)[0] for seed in (seed_a, seed_b))
        y = self.labels(frames, label if label is not None or not self.n_classes else 0)
        return self.generate(slerp(a, b, frames), y)


def slerp(a: torch.Tensor, b: torch.Tensor, frames: int) -> torch.Tensor:
    """`frames` codes [frames, z_dim] from a to b [z_dim] along the great circle; the ends are a
    and b exactly."""
    omega = torch.acos(torch.clamp(torch.dot(a / a.norm(), b / b.norm()), -1, 1)).item()
    t = torch.linspace(0, 1, frames, dtype=torch.float64)[:, None]
    a64, b64 = a.double(), b.double()
    if omega < 1e-6:
        out = (1 - t) * a64 + t * b64
    else:
        out = (torch.sin((1 - t) * omega) * a64 + torch.sin(t * omega) * b64) / math.sin(omega)
    out[0], out[-1] = a64, b64
    return out.float()


GOLDEN = (5**0.5 - 1) / 2  # the additive recurrence u_i = frac(1/2 + i * GOLDEN) spreads any prefix evenly


def classes_in_turn(n: int, n_classes: int, weights: list[float] | tuple[float, ...] = ()) -> torch.Tensor:
    """y [n] int64: the classes in turn (0, 1, ..., K-1, 0, ...), or with `weights` (one per
    class, a self-conditioned generator's cluster shares) each class in proportion to its weight:
    class c for the i-th sample when frac(1/2 + i * golden ratio) falls in c's share of [0, 1), so
    that every prefix of the sequence holds the classes in about their proportions, with no seed."""
    if not weights:
        return torch.arange(n) % n_classes
    cdf = torch.tensor(weights, dtype=torch.float64).cumsum(0)
    u = torch.remainder(0.5 + torch.arange(n, dtype=torch.float64) * GOLDEN, 1.0) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp(max=n_classes - 1)
