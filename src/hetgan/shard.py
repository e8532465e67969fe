"""Which part of a global batch one data-parallel rank computes on (see training/distributed.py).

Random draws and the data order are made for the global batch, alike on every rank, and each rank
keeps its part, so that a run's trajectory does not depend on how many ranks share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hetgan.errors import ConfigError


@dataclass(frozen=True)
class Shard:
    """Rank `rank` of `world`: which part of a global batch is this rank's."""

    rank: int = 0
    world: int = 1

    def part(self, t: torch.Tensor, parts: int = 1) -> torch.Tensor:
        """This rank's rows of `t`, drawn for the global batch. A batch made of `parts` equal
        parts (the real and the fake half of a joint batch) gives this rank's rows of each."""
        if self.world == 1:
            return t
        rows = t.shape[0] // (parts * self.world)
        return t.reshape(parts, self.world, rows, *t.shape[1:])[:, self.rank].reshape(-1, *t.shape[1:])

    def local_batch(self, batch_size: int, pack: int = 1) -> int:
        """The rows of a global batch of `batch_size` this rank computes on; a ConfigError if they
        do not divide evenly (every rank computes the same amount, and a pack stays on one rank)."""
        if batch_size % (self.world * pack):
            step = self.world * pack
            lower, upper = batch_size // step * step, (batch_size // step + 1) * step
            packs = f" in packs of loss.pack={pack}" if pack > 1 else ""
            raise ConfigError(
                f"train.batch_size={batch_size} is the global batch and must split evenly over "
                f"{self.world} ranks{packs}; pass --set train.batch_size={lower or upper} or {upper}"
            )
        return batch_size // self.world


WHOLE = Shard()  # a single process: the whole batch
