"""Data-parallel training (hetgan/training/distributed.py): real process groups, gloo, 2 ranks.

The slow tests start torchrun (with a timeout), as a user would: equivalence with one process,
agreement between ranks, a NaN on one rank, SIGTERM, a killed rank restarted, a change of world
size and a two-node rendezvous on loopback."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import benchmark_module, run_benchmark


def test_the_scaling_model_recovers_a_link_and_prices_each_message_on_its_link():
    model = benchmark_module("scaling_model")
    beta, alpha, world = 2e9, 50e-6, 2
    raw = {n: model.allreduce_model(n, world, beta, alpha) for n in (4, 1_000_000, 16_000_000)}
    fitted_beta, fitted_alpha = model.fit_link(raw, world)
    assert fitted_beta == pytest.approx(beta, rel=1e-3) and fitted_alpha == pytest.approx(alpha, rel=1e-3)
    m = {"n_critic": 5, "d_bytes": 8_000_000, "g_bytes": 4_000_000, "fused": False, "log_interval": 20, "log_bytes": 48}
    host = (1e9, 100e-6)  # gloo over TCP
    links = {"data": (beta, alpha), "host": host}
    assert model.step_model(0.01, 1, m, links) == 0.01  # one device: compute only
    # On 8 devices each all-reduce moves 2 * 7/8 of its bytes and pays 14 hops of its link's
    # latency: the gradients (5 D phases, 1 G phase) on the data link; the 6 phase flags, and
    # every 20th step the stop flag and the logged losses, on the host link.
    grads = 2 * 7 / 8 * (5 * 8e6 + 4e6) / beta + 14 * alpha * 6
    flags = 14 * host[1] * 6 + (2 * 14 * host[1] + 2 * 7 / 8 * (4 + 48) / host[0]) / 20
    assert model.step_model(0.01, 8, m, links) == pytest.approx(0.01 + grads + flags)
    # With fused Adam the phase flags stay on the device: the data link carries them.
    fused = m | {"fused": True}
    flags = 14 * alpha * 6 + (2 * 14 * host[1] + 2 * 7 / 8 * (4 + 48) / host[0]) / 20
    assert model.step_model(0.01, 8, fused, links) == pytest.approx(0.01 + grads + flags)
    assert model.window_calls(m) == sorted([8_000_000] * 100 + [4_000_000] * 20 + [4] * 121 + [48])


@pytest.mark.slow
def test_the_scaling_model_counts_every_all_reduce_the_code_makes(tmp_path):
    """benchmarks/scaling_model.py at 1 rank and on 2 nodes of this machine (torchrun, gloo; 2 ranks
    of one node take the same code path, as the two-rank tests show): the all-reduces a window of
    log_interval steps really makes are the model's messages, byte for byte; each layout gets a
    measured and a modelled step time, the 2-rank layout a fitted link."""
    out = tmp_path / "scaling.json"
    run_benchmark(
        "scaling_model", "--preset", "mlp_ring8", "--batch", "16", "--steps", "3", "--layouts", "1x1", "1x2",
        "--json", str(out), timeout=400, process=True,
    )  # fmt: skip
    result = json.loads(out.read_text())
    rows = {r["layout"]: r for r in result["layouts"]}
    assert sorted(rows) == ["1x1", "1x2"] and [rows[k]["world"] for k in ("1x1", "1x2")] == [1, 2]
    for r in rows.values():
        assert r["calls_per_window"] == r["model_calls_per_window"] and r["calls_per_window"], r["layout"]
        assert r["measured_step_ms"] > 0 and r["model_step_ms"] >= r["compute_ms"] > 0
        assert r["model_error"] == pytest.approx(r["model_step_ms"] / r["measured_step_ms"] - 1, abs=2e-3)
    for layout in ("1x2",):
        assert rows[layout]["link_gb_s"] > 0 and rows[layout]["link_latency_us"] > 0
        assert rows[layout]["model_step_ms"] > rows[layout]["compute_ms"]  # two ranks pay for their messages
    gpu = result["gpu_predictions"]
    for name, values in gpu.items():
        if name in ("worlds", "gpu_step_ms"):
            continue
        assert values[0] == 1.0 and values == sorted(values, reverse=True), name
        if "flags via host" in name:  # fused Adam moves the phase flags onto the faster link
            fused = gpu[name.replace("flags via host", "fused Adam, flags on GPU")]
            assert all(a <= b for a, b in zip(values, fused, strict=True))


def test_the_scaling_benchmark_kills_torchrun_and_its_ranks_on_timeout(tmp_path):
    """A torchrun past its time is killed with everything it started, not left with orphaned ranks."""
    model = benchmark_module("scaling_model")
    pid_file = tmp_path / "child.pid"
    cmd = ["sh", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]  # sh stands in for torchrun, sleep for a rank
    with pytest.raises(SystemExit, match="did not finish within 1 s"):
        model.run_group(cmd, timeout=1)
    child = int(pid_file.read_text())
    time.sleep(0.2)
    state = Path(f"/proc/{child}/status")
    assert not state.exists() or "State:\tZ" in state.read_text(), "the rank outlived its torchrun"
    with pytest.raises(subprocess.CalledProcessError):
        model.run_group(["sh", "-c", "exit 3"], timeout=10)
