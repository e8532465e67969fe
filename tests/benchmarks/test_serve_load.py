"""`hetgan serve` as a real process on a free loopback port, exercised over HTTP."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
@pytest.mark.program("wrk")
def test_serve_load_benchmark_runs_end_to_end(small):
    """benchmarks/serve_load.py with small bounds, so that the script cannot rot."""
    path, _ = small
    out = run_benchmark(
        "serve_load", "--artifact", str(path), "--backend", "torch", "--seconds", "1", "--clients", "1", "4",
        "--soak-requests", "1200", "--overload-seconds", "2", timeout=300,
    )  # fmt: skip
    assert "offline torch at batch 64" in out and " 4 clients:" in out and "soak: " in out and "server RSS" in out
    spent = out.split("where the time went at 4 clients: ")[1].split("\n")[0]
    loop_us = float(spent.split("event loop (main thread) ")[1].split(" us")[0])
    assert loop_us > 0  # the server did HTTP work on its main thread for the requests
    calls, mean = (float(x) for x in re.search(r"(\d+) generator calls of (\d+) samples", spent).groups())
    busy = float(re.search(r"in them (\d+) % of its", spent).group(1))
    assert calls > 0 and 1 <= mean <= 64 and 0 < busy <= 100 and "the machine idle " in spent
    assert "overload (64 clients pausing" in out and "probe:" in out
    if "none refused" not in out:  # the probe's 503s: p99 at most their slowest
        answered = re.search(r"p99 ([\d.]+) ms \(median [\d.]+ ms, slowest ([\d.]+) ms", out)
        p99, slowest = (float(x) for x in answered.groups())
        assert 0 < p99 <= slowest
    ratio = float(out.split(" img/s = ")[1].split(" of the best offline img/s")[0])
    assert 0 < ratio and "offline 1 stream: " in out and ", 2 streams: " in out
