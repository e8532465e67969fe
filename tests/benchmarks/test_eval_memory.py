import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_eval_memory_benchmark_compares_whole_and_blocked(tmp_path):
    """benchmarks/eval_memory.py, tiny: both sides run in child processes and agree."""
    args = ["--real", "300", "--fake", "200", "250", "--dim", "8", "--json", str(tmp_path / "r.json")]
    run_benchmark("eval_memory", *args, timeout=180)
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [row["generated"] for row in rows] == [200, 250]
    for row in rows:  # a child process with torch and NumPy loaded takes tens of MiB at least
        assert row["same_scores"] is True and row["whole"]["scores"] == pytest.approx(row["blocked"]["scores"])
        assert all(20 < row[side]["peak_mib"] < 4096 and row[side]["seconds"] > 0 for side in ("whole", "blocked"))
