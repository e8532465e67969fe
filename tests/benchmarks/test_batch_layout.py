import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_batch_layout_benchmark_times_both_layouts():
    """benchmarks/batch_layout.py runs and reports the joint layout against the separate one."""
    out = run_benchmark("batch_layout", "--presets", "mlp_ring8", "--rounds", "2", "--seconds", "0.2")
    assert "both sides: accel.optimizer_impl=fused" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("mlp_ring8"))
    assert row[1] == "50" and float(row[2]) > 0 and float(row[3]) > 0 and row[4].endswith("x")
    assert float(row[6]) > 0 and float(row[7]) > 0 and row[8].endswith("x")  # D's phase alone, ms per step
