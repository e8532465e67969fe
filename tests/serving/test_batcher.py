"""The serving batcher's workers and the thread priorities `hetgan serve` sets, in process."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hetgan.errors import HetganError
from hetgan.serving.batcher import Batcher, LatentDraw, lower_priority, other_threads
from hetgan.serving.server import check_threads, serving_streams

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")


def run_batcher(generate, pieces, delay: float = 0.0, **kw) -> list[np.ndarray]:
    """Submit `pieces` (one after another, `delay` s apart) to a started Batcher; their outputs."""

    async def main():
        batcher = Batcher(generate, **kw)
        batcher.start()
        tasks = []
        for z in pieces:
            tasks.append(asyncio.create_task(batcher.submit(z)))
            await asyncio.sleep(delay)
        outs = await asyncio.gather(*tasks)
        await batcher.stop()
        return outs

    return asyncio.run(main())


def test_two_workers_run_two_batches_at_once_each_request_gets_its_rows():
    both = threading.Barrier(2, timeout=10)  # passes only while two generator calls run together
    sizes = []

    def generate(z, y):
        sizes.append(len(z))
        both.wait()
        return z * 2

    pieces = [np.full((8, 3), i, np.float32) for i in range(2)]  # each fills a batch of 8
    outs = run_batcher(generate, pieces, max_batch=8, max_wait=0.05, workers=2)
    assert sizes == [8, 8]
    for z, out in zip(pieces, outs, strict=True):
        assert np.array_equal(out, z * 2)


def test_workers_take_turns_to_gather_so_a_batch_is_not_split_between_them():
    sizes = []

    def generate(z, y):
        sizes.append(len(z))
        return z

    # The second piece comes 20 ms after the first, within the first's wait: with the workers
    # gathering at once, the idle one would take it and both would run half a batch.
    pieces = [np.zeros((4, 3), np.float32), np.ones((4, 3), np.float32)]
    outs = run_batcher(generate, pieces, delay=0.02, max_batch=8, max_wait=0.5, workers=2)
    assert sizes == [8] and np.array_equal(outs[1], pieces[1])


@linux
def test_lower_priority_sets_a_thread_below_the_main_thread_once():
    seen = {}

    def work():
        seen["changed"], seen["again"] = lower_priority(5), None
        seen["nice"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        seen["again"] = lower_priority(5)  # already that low: left as it is

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    main = os.getpriority(os.PRIO_PROCESS, os.getpid())
    assert seen == {"changed": 1, "nice": min(main + 5, 19), "again": 0}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == main  # the caller's unchanged
    assert lower_priority(0) == 0


@linux
def test_other_threads_are_every_thread_but_the_caller():
    stop, started = threading.Event(), threading.Event()
    ids = {}

    def work():
        ids["worker"] = threading.get_native_id()
        started.set()
        stop.wait(10)

    thread = threading.Thread(target=work)
    thread.start()
    started.wait(10)
    try:
        others = other_threads()
    finally:
        stop.set()
        thread.join()
    assert ids["worker"] in others and threading.get_native_id() not in others


FAULTS = """
import resource, sys
import numpy as np
from hetgan.serving.server import hold_freed_memory
held = sys.argv[1] == "hold" and hold_freed_memory()
x = np.ones((256, 1, 32, 32), np.float32)  # a batch's output: 1 MiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):  # a batch's temporaries, as uint8_images makes them
    a = np.clip(x, -1, 1)
    b = np.rint(a)
    del a, b
print(held, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_without_faulting_its_pages_in_again():
    def faults(mode: str) -> tuple[str, int]:
        cmd = [sys.executable, "-c", FAULTS, mode]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120)
        held, count = out.stdout.split()
        return held, int(count)

    held, count = faults("hold")
    assert held == "True"
    # Without it, glibc trims the heap at every free here and each round faults its 2 MiB in again
    # (~50,000 faults); held, the pages stay.
    assert count < 2_000, (count, faults("default"))


def test_streams_and_threads_are_checked():
    assert serving_streams(1) == 1 and serving_streams(2) == 2 and serving_streams(16) == 2
    check_threads(2, 2)
    with pytest.raises(HetganError, match=r"--streams must be between 1 and the threads \(2\), got 3"):
        check_threads(2, 3)
    with pytest.raises(HetganError, match="--streams must be between 1 and the threads"):
        check_threads(2, 0)
    with pytest.raises(HetganError, match="--threads must be at least 1, got 0"):
        check_threads(0, 1)


def test_serve_refuses_a_niceness_out_of_range(capsys):
    from hetgan.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["serve", "--artifact", "g.safetensors", "--nice", "20"])
    assert stop.value.code == 2 and "--nice: invalid choice: 20" in capsys.readouterr().err


def test_a_worker_starts_its_next_batch_while_the_event_loop_is_busy():
    calls = []

    def generate(z, y):
        calls.append(time.perf_counter())
        return z

    async def main():
        batcher = Batcher(generate, max_batch=4, max_wait=0.0)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(np.full((4, 3), i, np.float32))) for i in range(3)]
        await asyncio.sleep(0)  # the three pieces are queued
        busy = (time.perf_counter(), time.sleep(0.5), time.perf_counter())  # the loop does nothing else
        outs = await asyncio.gather(*tasks)
        threads = list(batcher.threads)
        await batcher.stop()
        return busy, outs, threads

    (began, _, ended), outs, threads = asyncio.run(main())
    # All three batches ran while the loop was blocked: none waited for it to hand out the last.
    assert len(calls) == 3 and all(began <= t <= ended for t in calls)
    assert [int(out[0, 0]) for out in outs] == [0, 1, 2]
    assert threads and not any(thread.is_alive() for thread in threads)  # stop ended the workers


def test_finish_runs_once_per_batch_and_each_request_gets_its_finished_rows():
    finished = []

    def finish(out):
        finished.append(len(out))
        return (out * 10).astype(np.int64)

    pieces = [np.full((3, 2), i, np.float32) for i in range(3)]
    outs = run_batcher(lambda z, y: z + 1, pieces, max_batch=9, max_wait=0.5, finish=finish)
    assert finished == [9]  # one batch of the three requests, converted at once
    for i, out in enumerate(outs):
        assert out.dtype == np.int64 and np.array_equal(out, np.full((3, 2), (i + 1) * 10))


def test_a_one_piece_request_is_encoded_in_the_worker_and_a_failing_encode_fails_only_its_request():
    loop_thread = threading.get_native_id()
    where = {}

    def encode_as(name):
        def encode(rows):
            where[name] = threading.get_native_id()
            if name == "bad":
                raise ValueError("cannot encode")
            return (name, rows.sum())

        return encode

    async def main():
        batcher = Batcher(lambda z, y: z, max_batch=4, max_wait=0.5)
        batcher.start()
        ones = np.ones((2, 3), np.float32)
        tasks = [
            asyncio.create_task(batcher.submit(ones, encode=encode_as("good"))),
            asyncio.create_task(batcher.submit(ones, encode=encode_as("bad"))),  # the same batch
            asyncio.create_task(batcher.submit(np.ones((6, 3), np.float32), encode=encode_as("two pieces"))),
        ]
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return outs

    good, bad, joined = asyncio.run(main())
    assert good == ("good", 6.0) and isinstance(bad, ValueError) and joined == ("two pieces", 18.0)
    assert where["good"] != loop_thread and where["bad"] != loop_thread  # the worker encoded them
    assert where["two pieces"] == loop_thread  # joined from two batches first, on the loop


def test_a_one_piece_draw_is_drawn_in_the_worker_and_a_longer_one_once_in_the_loop():
    loop_thread = threading.get_native_id()
    drawn = []

    def draw_as(name, n):
        def draw():
            drawn.append((name, threading.get_native_id() == loop_thread))
            return np.arange(n * 2, dtype=np.float32).reshape(n, 2) + (100 if name == "long" else 0)

        return LatentDraw(n, draw)

    outs = run_batcher(lambda z, y: z * 2, [draw_as("short", 3), draw_as("long", 10)], max_batch=4, max_wait=0.05)
    assert sorted(drawn) == [("long", True), ("short", False)]  # each drawn once: the long one in the loop
    assert np.array_equal(outs[0], 2 * np.arange(6, dtype=np.float32).reshape(3, 2))
    assert np.array_equal(outs[1], 2 * (np.arange(20, dtype=np.float32).reshape(10, 2) + 100))  # its 3 pieces, in order


def test_a_failing_draw_fails_only_its_request():
    def bad():
        raise ValueError("cannot draw")

    async def main():
        batcher = Batcher(lambda z, y: z + 1, max_batch=8, max_wait=0.5)
        batcher.start()
        tasks = [
            asyncio.create_task(batcher.submit(LatentDraw(2, lambda: np.zeros((2, 3), np.float32)))),
            asyncio.create_task(batcher.submit(LatentDraw(2, bad))),  # the same batch
        ]
        outs = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        return outs

    good, failed = asyncio.run(main())
    assert np.array_equal(good, np.ones((2, 3), np.float32))
    assert isinstance(failed, ValueError) and str(failed) == "cannot draw"
