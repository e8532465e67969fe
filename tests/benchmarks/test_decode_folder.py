from tests.conftest import run_benchmark


def test_decode_benchmark_runs_and_reports_both_settings():
    """benchmarks/decode_folder.py, tiny: both worker counts decode every file and get a ratio."""
    out = run_benchmark("decode_folder", "--images", "12", "--size", "48", "--resolution", "16", "--rounds", "2")
    rows = [line.split() for line in out.splitlines() if "img/s" in line]
    assert [row[:2] for row in rows][0] == ["1", "worker"] and len(rows) == 2
    assert rows[0][-2] == "1.00x" and all(float(row[2]) > 0 for row in rows)
