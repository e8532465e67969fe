"""Data-parallel training (hetgan/training/distributed.py): real process groups, gloo, 2 ranks.

The slow tests start torchrun (with a timeout), as a user would: equivalence with one process,
agreement between ranks, a NaN on one rank, SIGTERM, a killed rank restarted, a change of world
size and a two-node rendezvous on loopback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import benchmark_module


def test_the_scaling_model_recovers_a_link_and_predicts_its_ring_cost():
    model = benchmark_module("scaling_model")
    beta, alpha, world = 2e9, 50e-6, 2
    raw = {n: model.allreduce_model(n, world, beta, alpha) for n in (4, 1_000_000, 16_000_000)}
    fitted_beta, fitted_alpha = model.fit_link(raw, world)
    assert fitted_beta == pytest.approx(beta, rel=1e-3) and fitted_alpha == pytest.approx(alpha, rel=1e-3)
    m = {"n_critic": 5, "d_bytes": 8_000_000, "g_bytes": 4_000_000}
    assert model.step_model(0.01, 1, m, beta, alpha) == 0.01  # one device: compute only
    # On 8 devices each all-reduce moves 2 * 7/8 of its bytes and pays 14 hops of latency.
    comm = 2 * 7 / 8 * (5 * 8e6 + 4e6) / beta + 14 * alpha * (5 + 1 + 5 + 2)
    assert model.step_model(0.01, 8, m, beta, alpha) == pytest.approx(0.01 + comm)


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
