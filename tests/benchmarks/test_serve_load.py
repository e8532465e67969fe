"""`hetgan serve` as a real process on a free loopback port, exercised over HTTP."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
@pytest.mark.program("wrk")
def test_serve_load_benchmark_runs_end_to_end(small, tmp_path):
    """benchmarks/serve_load.py with small bounds, so that the script cannot rot."""
    path, _ = small
    out = run_benchmark(
        "serve_load", "--artifact", str(path), "--backend", "torch", "--seconds", "1", "--clients", "1", "4",
        "--soak-requests", "1200", "--overload-seconds", "2", "--json", str(tmp_path / "r.json"),
        timeout=300, process=True,
    )  # fmt: skip
    assert "where the time went at 4 clients: " in out and "probe:" in out  # the report in words
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["backend"] == "torch" and [load["clients"] for load in record["loads"]] == [1, 4]
    for load in record["loads"]:  # every request answered 200; img/s is n=16 images per answer
        assert load["statuses"] == {"200": load["requests"]} and load["socket_errors"] == 0
        assert 0 < load["p50_ms"] <= load["p99_ms"] and load["img_per_s"] == pytest.approx(16 * load["req_per_s"])
    spent = record["spent"]  # the server did HTTP work on its main thread, and batched the requests
    assert spent["loop_us_per_request"] > 0 and spent["generator_calls"] > 0
    assert 1 <= spent["mean_samples_per_call"] <= 64 and 0 < spent["streams_busy"] <= 1
    assert 0 <= spent["machine_idle"] <= 1
    top, offline = record["loads"][-1], record["offline"]
    assert record["ratio"] == pytest.approx(top["img_per_s"] / offline["img_per_s"]) and offline["how"] in (
        "1 stream",
        f"{record['streams']} streams",
    )
    soak = record["soak"]
    assert soak["requests"] >= 200 and soak["rss_growth_pct"] == pytest.approx(
        100 * (soak["rss_mib"][1] - soak["rss_mib"][0]) / soak["rss_mib"][0]
    )
    overload = record["overload"]
    assert overload["load"]["clients"] == 64 and set(overload["load"]["statuses"]) <= {"200", "503"}
    if overload["refused_p99_ms"] is not None:  # the probe's 503s: p99 at most their slowest
        assert 0 < overload["refused_p99_ms"] <= overload["slowest_ms"]
