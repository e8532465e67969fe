"""Dynamic batching: concurrent requests' latent codes merged into one generator call.

Each request's z is drawn from its own seed exactly as `hetgan sample` draws it (all n codes at
once, on the CPU), cut into pieces of at most `max_batch`, and queued. A worker takes the first
waiting piece, adds more until `max_batch` samples or until `max_wait` has passed since it took
the first, runs the generator once on the concatenated codes in a thread of its own, and hands
each piece its own rows. A request therefore gets its seed's samples whatever it was batched with.

With `workers` > 1 (a runtime with as many streams), that many batches run at once; the workers
take turns to gather a batch, so one fills while the others run theirs.

The queue is bounded in pieces: a request that does not fit is refused at once (`QueueFull`,
HTTP 503) instead of waiting behind work the server cannot finish in time.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch


def lower_priority(nice: int, threads: Iterable[int] | None = None) -> int:
    """Set these threads (native ids; default: the calling one) `nice` above the niceness of the
    process's main thread, so that the scheduler prefers the main thread when the cores are short.
    Linux only, where niceness is per thread; elsewhere, and for `nice` 0, nothing. A thread already
    that low is left as it is. Returns how many were lowered.

    `hetgan serve` runs its generator threads so: the event loop (the main thread) does little per
    request (parse, answer, refuse with 503) and its latency matters; the batches take the rest."""
    if nice <= 0 or not sys.platform.startswith("linux"):
        return 0
    target = min(os.getpriority(os.PRIO_PROCESS, os.getpid()) + nice, 19)
    changed = 0
    for tid in [threading.get_native_id()] if threads is None else threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < target:
                os.setpriority(os.PRIO_PROCESS, tid, target)
                changed += 1
        except (ProcessLookupError, PermissionError):  # a thread that has ended meanwhile
            pass
    return changed


def other_threads() -> list[int]:
    """Native ids of this process's threads but the calling one (Linux; elsewhere none)."""
    if not os.path.isdir("/proc/self/task"):
        return []
    me = threading.get_native_id()
    return [tid for tid in map(int, os.listdir("/proc/self/task")) if tid != me]


class QueueFull(Exception):
    """The request queue is at its bound; the caller should retry later."""


@dataclass
class Piece:
    z: np.ndarray  # [k, z_dim] float32, k <= max_batch
    future: asyncio.Future
    y: np.ndarray | None = None  # [k] int64 class indices, for a conditional generator
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """Merges queued pieces into generator calls. `generate(z [B, z_dim], y [B] or None) ->
    samples [B, ...]` runs in `workers` threads at most at once: the runtimes use several cores
    themselves, and one call at a time unless they have as many streams."""

    def __init__(
        self,
        generate: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        workers: int = 1,
        nice: int = 0,
    ) -> None:
        self.generate = generate
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.on_batch = on_batch  # (samples, seconds) after each generator call, for metrics
        self.queue: asyncio.Queue[Piece] | None = None
        self.workers = workers
        # A worker thread lowers its own priority when it starts (`nice`), and so do the threads it
        # starts: a runtime's pool begun from it inherits the niceness.
        self.executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="hetgan-generate", initializer=lower_priority, initargs=(nice,)
        )
        self.tasks: list[asyncio.Task] = []
        self.gathering: asyncio.Lock | None = None  # one worker gathers a batch at a time
        self.carry: Piece | None = None  # taken from the queue, too big for the batch it was taken for

    @property
    def depth(self) -> int:
        """Pieces waiting (not yet taken into a batch)."""
        return self.queue.qsize() if self.queue is not None else 0

    @property
    def full(self) -> bool:
        return self.queue is not None and self.queue.full()

    def start(self) -> None:
        self.queue = asyncio.Queue(maxsize=self.max_queue)
        self.gathering = asyncio.Lock()
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._run()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Finish what is queued, then stop the workers."""
        if not self.tasks:
            return
        await self.queue.join()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.executor.shutdown(wait=True)

    async def submit(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """Samples for codes z [n, z_dim] (of classes y [n], for a conditional generator), in
        order. Raises QueueFull when its pieces do not fit."""
        starts = range(0, len(z), self.max_batch)
        if self.queue.maxsize - self.queue.qsize() < len(starts):
            raise QueueFull(f"{self.queue.qsize()} of {self.queue.maxsize} queue places taken")
        loop = asyncio.get_running_loop()
        futures = []
        for i in starts:
            part = slice(i, i + self.max_batch)
            piece = Piece(z[part], loop.create_future(), None if y is None else y[part])
            self.queue.put_nowait(piece)
            futures.append(piece.future)
        try:
            if len(futures) == 1:  # most requests: one piece, and no gathering future to make
                return await futures[0]
            return np.concatenate(await asyncio.gather(*futures))
        except asyncio.CancelledError:  # the request timed out or its client left: drop its pieces
            for future in futures:
                future.cancel()
            raise

    async def _next_batch(self) -> list[Piece]:
        first = self.carry or await self.queue.get()
        self.carry = None
        batch, size = [first], len(first.z)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            try:
                if self.queue.qsize():
                    piece = self.queue.get_nowait()
                else:
                    piece = await asyncio.wait_for(self.queue.get(), max(deadline - time.perf_counter(), 0))
            except TimeoutError:
                break
            if size + len(piece.z) > self.max_batch:
                self.carry = piece  # it starts the next batch
                break
            batch.append(piece)
            size += len(piece.z)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            async with self.gathering:
                batch = await self._next_batch()
            live = [p for p in batch if not p.future.cancelled()]
            try:
                if live:
                    z = torch.from_numpy(np.concatenate([p.z for p in live]))
                    y = None if live[0].y is None else torch.from_numpy(np.concatenate([p.y for p in live]))
                    start = time.perf_counter()
                    out = await loop.run_in_executor(self.executor, self.generate, z, y)
                    if self.on_batch:
                        self.on_batch(len(z), time.perf_counter() - start)
                    self._hand_out(live, out.numpy())
            except Exception as e:  # a failed call fails its requests, not the server
                for piece in live:
                    if not piece.future.done():
                        piece.future.set_exception(e)
            finally:
                for _ in batch:
                    self.queue.task_done()

    @staticmethod
    def _hand_out(pieces: list[Piece], out: np.ndarray) -> None:
        i = 0
        for piece in pieces:
            rows = out[i : i + len(piece.z)]
            i += len(piece.z)
            if not piece.future.done():
                piece.future.set_result(rows)
