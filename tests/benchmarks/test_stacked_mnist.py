"""benchmarks/stacked_mnist.py end to end, tiny: every variant trains and is scored by the protocol."""

import math

import pytest

from tests.conftest import run_benchmark, strict_loads


@pytest.mark.slow
def test_stacked_mnist_benchmark_scores_every_variant(tmp_path):
    out = tmp_path / "stacked.json"
    args = ["--seeds", "0", "--kimg", "0.26", "--n", "300", "--real-n", "600", "--json", str(out)]
    run_benchmark("stacked_mnist", *args, timeout=600)
    record = strict_loads(out.read_text())
    rows = record["rows"]
    assert [r["variant"] for r in rows] == ["plain", "pacgan2", "selfcond"]
    assert rows[1]["overrides"] == ["loss.pack=2"] and "data.clusters=100" in rows[2]["overrides"]
    for r in rows:
        assert r["kimg"] == 0.26 and r["n"] == 300 and r["real_n"] == 600 and r["wall_s"] > 0 and r["fid"] > 0
        assert 1 <= r["modes"] <= 300  # 300 samples cover at most 300 modes
        # KL to uniform of 300 samples over at most 300 of the 1000 modes: at least log(1000 / 300),
        # at most log(1000) (all one mode); the script rounds it to 4 places
        assert math.log(1000 / 300) - 5e-5 <= r["kl"] <= math.log(1000) + 5e-5
    assert all(s["met"] is False for s in record["summary"].values())  # 0.26 kimg meets nothing
