"""Batches on the training device, in a reproducible order whose position can be checkpointed.

Small datasets live on the device as uint8 and are indexed there, so the hot path has no loader,
no worker processes and no host-device copy. Larger ones are gathered ahead of the step by a CPU
thread (PrefetchSampler), and image folders read with data.loader=stream are decoded there too.
"""

from __future__ import annotations

import queue
import threading

import torch

from hetgan.data.images import LazyImages
from hetgan.data.sources import Data, ImageData, Mixture
from hetgan.shard import WHOLE, Shard


class ImageSampler:
    """Shuffled epochs over a uint8 [N, C, H, W] tensor; batches are float in [-1, 1].

    The order of epoch e is a function of (seed, e) alone, so the position (epoch, offset) is the
    whole sampler state: a resumed run draws exactly the batches the uninterrupted run would. A
    data-parallel rank (`shard`) walks the same order and keeps its part of each global batch.
    """

    def __init__(
        self, data: ImageData, seed: int, device: torch.device, shard: Shard = WHOLE, labelled: bool = False
    ) -> None:
        self.shard = shard
        if isinstance(data.images, LazyImages):  # decoded batch by batch, on the CPU
            self.images, self.device = data.images, torch.device("cpu")
        else:
            key = str(torch.device(device))
            if key not in data.device_copies:
                data.device_copies[key] = torch.from_numpy(data.images).to(device)  # [N, C, H, W] uint8
            self.images = data.device_copies[key]
            self.device = self.images.device
        # With `labelled`, batches come with their labels: int64 [N] beside the images.
        self.labels = torch.from_numpy(data.labels).to(self.device) if labelled else None
        self.seed = seed
        self.epoch = 0
        self.offset = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        perm = torch.randperm(len(self.images), generator=g)  # on the CPU: the same order on any device
        return to_device(perm, self.device)

    def next(self, batch_size: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of the next global batch of `batch_size`: float [B / world, C, H, W] in
        [-1, 1] on the sampler's device (and its labels [B / world], when labelled)."""
        return to_unit_range(self.next_uint8(batch_size))

    def next_uint8(self, batch_size: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        chunks, need = [], batch_size
        while need > 0:
            take = min(need, len(self.images) - self.offset)
            chunks.append(self._perm[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == len(self.images):
                self.epoch, self.offset = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        index = self.shard.part(chunks[0] if len(chunks) == 1 else torch.cat(chunks))
        if isinstance(self.images, LazyImages):
            images = torch.from_numpy(self.images[index.numpy()])
        else:
            images = self.images[index]  # [B, C, H, W] uint8
        return images if self.labels is None else (images, self.labels[index])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict) -> None:
        # A run resumed on other data (--allow-config-change) may hold fewer images than the
        # position: it then goes on with the next epoch, instead of a batch of the wrong size.
        self.epoch, self.offset = int(state["epoch"]), min(int(state["offset"]), len(self.images))
        self._perm = self._permutation(self.epoch)


class MixtureSampler:
    """Fresh points from a 2-D Gaussian mixture for every batch; state is its RNG state. With
    `labelled` (a self-conditioned run: the mixture has cluster centres), each point comes with
    the index of its nearest centre."""

    def __init__(
        self, data: Mixture, seed: int, device: torch.device, shard: Shard = WHOLE, labelled: bool = False
    ) -> None:
        self.shard = shard
        self.modes = torch.from_numpy(data.modes)
        self.sigma = data.sigma
        self.centres = torch.from_numpy(data.centres) if labelled else None  # float64 [k, 2]
        self.device = device
        self.generator = torch.Generator().manual_seed(seed * 1_000_003 + 7)

    def next(self, batch_size: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        which = torch.randint(len(self.modes), (batch_size,), generator=self.generator)
        noise = torch.randn(batch_size, 2, generator=self.generator) * self.sigma
        points = self.modes[which] + noise
        part = to_device(self.shard.part(points).to(torch.get_default_dtype()), self.device)  # [B / world, 2]
        if self.centres is None:
            return part
        labels = torch.cdist(points.double(), self.centres).argmin(1)  # [B]
        return part, to_device(self.shard.part(labels), self.device)

    def state_dict(self) -> dict:
        return {"rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["rng"])


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on `device`; onto CUDA through pinned memory, since a copy from pageable
    memory makes the host wait for the GPU."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def to_unit_range(batch: torch.Tensor | tuple[torch.Tensor, torch.Tensor]):
    """uint8 in [0, 255] -> [-1, 1], in torch's default dtype (float32 unless set otherwise); an
    (images, labels) batch keeps its labels as they are."""
    if isinstance(batch, tuple):
        return to_unit_range(batch[0]), batch[1]
    return batch.to(torch.get_default_dtype()).div_(127.5).sub_(1.0)


class PrefetchSampler:
    """For datasets too large to keep on the accelerator: a worker thread gathers each batch on
    the CPU (uint8) while the device computes the previous step. On CUDA it pins the batch and
    copies it on a stream of its own, so the copy overlaps the step's kernels; the step's stream
    waits for the copy's event before using it. Same batches, same order and the same
    checkpointable position as ImageSampler.
    """

    def __init__(
        self,
        data: ImageData,
        seed: int,
        device: torch.device,
        depth: int = 3,
        shard: Shard = WHOLE,
        labelled: bool = False,
    ) -> None:
        self.cpu = ImageSampler(data, seed, torch.device("cpu"), shard, labelled)  # the order logic, on the host
        self.device = device
        self.depth = depth
        self._state = self.cpu.state_dict()  # position after the last batch handed out
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _work(self, batch_size: int, q: queue.Queue, stop: threading.Event) -> None:
        copy_stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        while not stop.is_set():
            try:
                item = (self._gather(batch_size, copy_stream), self.cpu.state_dict())
            except Exception as e:  # handed to next(), which raises it instead of waiting forever
                item = (e, None)
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if isinstance(item[0], Exception):
                return

    def _gather(self, batch_size: int, copy_stream) -> tuple[tuple[torch.Tensor, ...], torch.cuda.Event | None]:
        """((uint8 batch[, labels]), None) on the CPU; (the same on the GPU, its copy's event) on CUDA."""
        batch = self.cpu.next_uint8(batch_size)
        batch = batch if isinstance(batch, tuple) else (batch,)
        if copy_stream is None:
            return batch, None
        with torch.cuda.stream(copy_stream):
            on_device = tuple(t.pin_memory().to(self.device, non_blocking=True) for t in batch)
            done = torch.cuda.Event()
            done.record(copy_stream)
        return on_device, done

    def next(self, batch_size: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self._thread is None:
            self._queue, self._stop = queue.Queue(maxsize=self.depth), threading.Event()
            self._thread = threading.Thread(
                target=self._work, args=(batch_size, self._queue, self._stop), name="hetgan-prefetch", daemon=True
            )
            self._thread.start()
        batch, state = self._queue.get()
        if isinstance(batch, Exception):
            self._thread = None  # the worker has stopped; a later call resumes from the last batch handed out
            self.cpu.load_state_dict(self._state)
            raise batch
        self._state = state
        batch, copied = batch
        if copied is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(copied)
            for t in batch:
                t.record_stream(compute)  # allocated on the copy stream, used on this one
        batch = tuple(t.to(self.device) for t in batch)
        return to_unit_range(batch if len(batch) == 2 else batch[0])

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def state_dict(self) -> dict:
        return dict(self._state)

    def load_state_dict(self, state: dict) -> None:
        self.close()  # batches already prefetched belong to the old position
        self.cpu.load_state_dict(state)
        self._state = dict(state)


def make_sampler(
    data: Data,
    seed: int,
    device: torch.device,
    loader: str = "auto",
    resident_max_mb: int = 2048,
    shard: Shard = WHOLE,
    labelled: bool = False,
) -> ImageSampler | MixtureSampler | PrefetchSampler:
    """Mixtures are sampled directly; images live on the device unless they are larger than
    `resident_max_mb` on an accelerator (loader 'auto'), loader is 'prefetch', or they are
    decoded as they are needed (loader 'stream': LazyImages), always ahead of the step.
    `labelled`: image batches come as (images, labels)."""
    device = torch.device(device)
    if isinstance(data, Mixture):
        return MixtureSampler(data, seed, device, shard, labelled)
    too_big = device.type != "cpu" and data.images.nbytes > resident_max_mb * 2**20
    if loader in ("prefetch", "stream") or (loader == "auto" and too_big):
        return PrefetchSampler(data, seed, device, shard=shard, labelled=labelled)
    return ImageSampler(data, seed, device, shard, labelled)
