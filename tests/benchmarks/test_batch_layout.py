import json

import pytest

from hetgan.presets import get_preset
from tests.benchmarks.records import assert_timed_against
from tests.conftest import run_benchmark


@pytest.mark.slow
def test_batch_layout_benchmark_times_both_layouts(tmp_path):
    """benchmarks/batch_layout.py runs and reports the joint layout against the separate one."""
    args = ["--presets", "mlp_ring8", "--rounds", "2", "--seconds", "0.2", "--json", str(tmp_path / "r.json")]
    run_benchmark("batch_layout", *args)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["both_sides"] == ["accel.optimizer_impl=fused"]
    row = record["presets"]["mlp_ring8"]
    assert row["batch"] == get_preset("mlp_ring8").train.batch_size
    assert_timed_against({k: row[k] for k in ("separate", "joint")}, "separate", rounds=2)
    for layout in ("separate", "joint"):  # D's phase alone, in ms per step: a share of a step's time
        step_ms = 1000 * row["batch"] / row[layout]["median"]
        assert 0.01 * step_ms < row["d_phase_ms"][layout] < 10 * step_ms, layout
