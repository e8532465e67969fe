import json
import os

from tests.benchmarks.records import assert_timed_against
from tests.conftest import run_benchmark


def test_decode_benchmark_runs_and_reports_both_settings(tmp_path):
    """benchmarks/decode_folder.py, tiny: both worker counts decode every file and get a ratio."""
    args = ["--images", "12", "--size", "48", "--resolution", "16", "--rounds", "2", "--json", str(tmp_path / "r.json")]
    run_benchmark("decode_folder", *args)
    record = json.loads((tmp_path / "r.json").read_text())
    cores = os.cpu_count() or 1
    assert record["images"] == 12 and record["cores"] == cores
    assert set(record["workers"]) == {"1", str(cores)}
    assert_timed_against(record["workers"], "1", rounds=2)
