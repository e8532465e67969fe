"""Batches on the training device, in a reproducible order whose position can be checkpointed.

Small datasets (everything hetgan reads fits in memory) live on the device as uint8 and are
indexed there, so the hot path has no loader, no worker processes and no host-device copy.
"""

from __future__ import annotations

import torch

from hetgan.data.sources import Data, ImageData, Mixture


class ImageSampler:
    """Shuffled epochs over a uint8 [N, C, H, W] tensor; batches are float in [-1, 1].

    The order of epoch e is a function of (seed, e) alone, so the position (epoch, offset) is the
    whole sampler state: a resumed run draws exactly the batches the uninterrupted run would.
    """

    def __init__(self, data: ImageData, seed: int, device: torch.device) -> None:
        self.images = torch.from_numpy(data.images).to(device)  # [N, C, H, W] uint8
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.images), generator=g).to(self.images.device)

    def next(self, batch_size: int) -> torch.Tensor:
        chunks, need = [], batch_size
        while need > 0:
            take = min(need, len(self.images) - self.offset)
            chunks.append(self._perm[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == len(self.images):
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        index = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
        return self.images[index].float().div_(127.5).sub_(1.0)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._perm = self._permutation(self.epoch)


class MixtureSampler:
    """Fresh points from a 2-D Gaussian mixture for every batch; state is its RNG state."""

    def __init__(self, data: Mixture, seed: int, device: torch.device) -> None:
        self.modes = torch.from_numpy(data.modes)
        self.sigma = data.sigma
        self.device = device
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + 7)

    def next(self, batch_size: int) -> torch.Tensor:
        which = torch.randint(len(self.modes), (batch_size,), generator=self.generator)
        noise = torch.randn(batch_size, 2, generator=self.generator) * self.sigma
        return (self.modes[which] + noise).to(self.device)  # [B, 2]

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


def make_sampler(data: Data, seed: int, device: torch.device) -> ImageSampler | MixtureSampler:
    if isinstance(data, Mixture):
        return MixtureSampler(data, seed, device)
    return ImageSampler(data, seed, device)
