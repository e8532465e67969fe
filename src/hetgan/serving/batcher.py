"""Dynamic batching: concurrent requests' latent codes merged into one generator call.

Each request's z is drawn from its own seed exactly as `hetgan sample` draws it (all n codes at
once, on the CPU), cut into pieces of at most `max_batch`, and queued. A worker takes the first
waiting piece, adds more until `max_batch` samples or until `max_wait` has passed since it took
the first, runs the generator once on the concatenated codes (and `finish` on its output: the
service turns a batch into uint8 images at once, not request by request on the event loop), and
hands each piece its own rows.
A request therefore gets its seed's samples whatever it was batched with.

A request of one piece may come as a `LatentDraw` instead of its codes: the worker draws them just
before its batch runs, so that the event loop does not (torch releases the GIL in the draw, and
the loop then waits to get it back from the workers).

The workers are threads of their own that wait on a thread-safe queue: the event loop only puts
pieces in and receives finished batches (one callback each). A worker never waits for the event
loop to be free before it starts its next batch; when the loop is busy answering the last batch's
requests and parsing the next ones, the generator goes on with what is already queued.

With `workers` > 1 (a runtime with as many streams), that many batches run at once; the workers
take turns to gather a batch, so one fills while the others run theirs.

The queue is bounded in pieces: a request that does not fit is refused at once (`QueueFull`,
HTTP 503) instead of waiting behind work the server cannot finish in time.
"""

from __future__ import annotations

import asyncio
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LatentDraw:
    """A request's latent codes, to be drawn in the batch's worker: `draw()` -> z [n, z_dim] float32."""

    n: int
    draw: Callable[[], np.ndarray]

    def __len__(self) -> int:
        return self.n


@dataclass
class BatchItem:
    """Up to max_batch rows of one request, queued to be merged with others into a generator call."""

    z: np.ndarray | LatentDraw  # [k, z_dim] float32, k <= max_batch, or a LatentDraw of them
    future: asyncio.Future
    y: np.ndarray | None = None  # [k] int64 class indices, for a conditional generator
    encode: Callable[[np.ndarray], object] | None = None  # what the request gets of its rows, made in the worker


class Batcher:
    """Merges queued pieces into generator calls. `generate(z [B, z_dim], y [B] or None) ->
    samples [B, ...]` runs in `workers` threads at most at once: the runtimes use several cores
    themselves, and one call at a time unless they have as many streams. `submit` and `stop` are
    the event loop's; everything else runs in the worker threads."""

    def __init__(
        self,
        generate: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
        max_batch: int = 64,
        max_wait: float = 0.005,
        max_queue: int = 64,
        on_batch: Callable[[int, float], None] | None = None,
        workers: int = 1,
        nice: int = 0,
        finish: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.generate = generate
        self.finish = finish  # applied to each batch's output in its worker, e.g. to uint8 images
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait, max_queue
        self.on_batch = on_batch  # (samples, seconds) after each generator call, for metrics; in the loop
        self.workers, self.nice = workers, nice
        self.queue: queue.Queue[BatchItem | None] = queue.Queue(maxsize=max_queue)  # None: a worker's stop
        self.loop: asyncio.AbstractEventLoop | None = None
        self.threads: list[threading.Thread] = []
        self.gathering = threading.Lock()  # one worker gathers a batch at a time
        self.held_over: list[BatchItem | None] = []  # taken from the queue, too big for the batch it was taken for

    @property
    def depth(self) -> int:
        """Pieces waiting (not yet taken into a batch)."""
        return self.queue.qsize()

    @property
    def full(self) -> bool:
        return self.queue.full()

    def start(self) -> None:
        """Start the workers; called in the event loop that will `submit`."""
        self.loop = asyncio.get_running_loop()
        self.threads = [
            threading.Thread(target=self._work, name=f"hetgan-generate-{i}", daemon=True) for i in range(self.workers)
        ]
        for thread in self.threads:
            thread.start()

    async def stop(self) -> None:
        """Finish what is queued, then stop the workers."""
        if not self.threads:
            return
        await asyncio.to_thread(self.queue.join)
        for _ in self.threads:
            await asyncio.to_thread(self.queue.put, None)
        for thread in self.threads:
            await asyncio.to_thread(thread.join)
        self.threads = []

    async def submit(self, z: np.ndarray | LatentDraw, y: np.ndarray | None = None, encode: Callable | None = None):
        """Samples for codes z [n, z_dim] (of classes y [n], for a conditional generator), in
        order, or `encode(samples)` where given: for a request of one piece the worker calls it,
        so that encoding (an npz, a PNG) is not the event loop's work. z may be a `LatentDraw`: the
        worker draws the codes of a request of one piece; those of a longer one are drawn here, all
        at once, and cut. Raises QueueFull when its pieces do not fit."""
        starts = range(0, len(z), self.max_batch)
        # Only the event loop puts pieces in, and the workers only take them out: the room seen
        # here can only grow before the puts below.
        if self.queue.maxsize - self.queue.qsize() < len(starts):
            raise QueueFull(f"{self.queue.qsize()} of {self.queue.maxsize} queue places taken")
        one = len(starts) == 1
        if isinstance(z, LatentDraw) and not one:
            z = z.draw()
        futures = []
        whole = encode if one else None  # several pieces: encoded here once joined
        for i in starts:
            part = slice(i, i + self.max_batch)
            piece = BatchItem(z if one else z[part], self.loop.create_future(), None if y is None else y[part], whole)
            self.queue.put_nowait(piece)
            futures.append(piece.future)
        try:
            if len(futures) == 1:  # most requests: one piece, and no gathering future to make
                return await futures[0]
            samples = np.concatenate(await asyncio.gather(*futures))
            return samples if encode is None else encode(samples)
        except asyncio.CancelledError:  # the request timed out or its client left: drop its pieces
            for future in futures:
                future.cancel()
            raise

    def _work(self) -> None:
        lower_priority(self.nice)  # the runtime threads this one starts inherit it
        while True:
            with self.gathering:
                batch = self._next_batch()
            if batch is None:
                self.queue.task_done()
                return
            try:
                self._run(batch)
            finally:
                for _ in batch:
                    self.queue.task_done()

    def _next_batch(self) -> list[BatchItem] | None:
        """The next batch's pieces, or None when the worker is to stop."""
        first = self.held_over.pop() if self.held_over else self.queue.get()
        if first is None:
            return None
        batch, size = [first], len(first.z)
        deadline = time.perf_counter() + self.max_wait
        while size < self.max_batch:
            try:
                piece = self.queue.get(timeout=max(deadline - time.perf_counter(), 0))
            except queue.Empty:
                break
            if piece is None or size + len(piece.z) > self.max_batch:
                self.held_over.append(piece)  # it starts the next batch (or stops the next worker)
                break
            batch.append(piece)
            size += len(piece.z)
        return batch

    def _run(self, batch: list[BatchItem]) -> None:
        live = [p for p in batch if not p.future.cancelled()]  # a read: the loop may cancel meanwhile
        live, codes = self._drawn(live)
        if not live:
            return
        try:
            z = torch.from_numpy(np.concatenate(codes))
            y = None if live[0].y is None else torch.from_numpy(np.concatenate([p.y for p in live]))
            start = time.perf_counter()
            out = self.generate(z, y).numpy()
            seconds = time.perf_counter() - start  # the generator call alone, as the metric says
            if self.finish is not None:
                out = self.finish(out)
        except Exception as e:  # a failed call fails its requests, not the server
            self.loop.call_soon_threadsafe(self._fail, live, e)
            return
        results, i = [], 0
        for piece in live:
            rows = out[i : i + len(piece.z)]
            i += len(piece.z)
            results.append(self._encoded(piece, rows))
        self.loop.call_soon_threadsafe(self._hand_out, live, results, seconds, len(out))

    def _drawn(self, pieces: list[BatchItem]) -> tuple[list[BatchItem], list[np.ndarray]]:
        """The pieces whose codes are at hand or could be drawn, and those codes; a piece whose
        draw raised fails on its own, not the batch."""
        drawn, codes = [], []
        for piece in pieces:
            try:
                codes.append(piece.z.draw() if isinstance(piece.z, LatentDraw) else piece.z)
            except Exception as e:
                self.loop.call_soon_threadsafe(self._fail, [piece], e)
                continue
            drawn.append(piece)
        return drawn, codes

    @staticmethod
    def _encoded(piece: BatchItem, rows: np.ndarray) -> tuple[bool, object]:
        """(True, what the piece's request gets) or (False, the exception encoding raised)."""
        if piece.encode is None:
            return True, rows
        try:
            return True, piece.encode(rows)
        except Exception as e:  # that request fails, not the batch
            return False, e

    def _hand_out(self, pieces: list[BatchItem], results: list, seconds: float, samples: int) -> None:
        if self.on_batch:
            self.on_batch(samples, seconds)
        for piece, (ok, value) in zip(pieces, results, strict=True):
            if piece.future.done():
                continue
            if ok:
                piece.future.set_result(value)
            else:
                piece.future.set_exception(value)

    @staticmethod
    def _fail(pieces: list[BatchItem], error: Exception) -> None:
        for piece in pieces:
            if not piece.future.done():
                piece.future.set_exception(error)
