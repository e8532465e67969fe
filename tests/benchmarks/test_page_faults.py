import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_page_fault_benchmark_times_both_allocator_settings(tmp_path):
    """benchmarks/page_faults.py, tiny: a child process per setting trains and reports its
    windows, and the two settings' step times give a ratio."""
    args = ["--pairs", "1", "--rounds", "2", "--seconds", "0.3", "--batch", "8", "--width", "8"]
    run_benchmark("page_faults", *args, "--json", str(tmp_path / "r.json"), timeout=180)
    record = json.loads((tmp_path / "r.json").read_text())
    settings = record["settings"]
    assert set(settings) == {"glibc defaults", "keep freed memory"}
    for s in settings.values():  # img/s and ms per step describe the same steps of batch 8
        assert s["windows"] == 2 and s["faults_per_step"] >= 0 and s["system_ms_per_step"] >= 0
        assert s["img_per_s"] > 0 and 8000 / s["ms_per_step"] == pytest.approx(s["img_per_s"], rel=0.5)
    ratio = settings["glibc defaults"]["ms_per_step"] / settings["keep freed memory"]["ms_per_step"]
    assert record["defaults_over_keep"] == pytest.approx(ratio)
