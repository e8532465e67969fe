from tests.conftest import run_benchmark


def test_eval_memory_benchmark_compares_whole_and_blocked():
    """benchmarks/eval_memory.py, tiny: both sides run in child processes and agree."""
    out = run_benchmark("eval_memory", "--real", "300", "--fake", "200", "250", "--dim", "8", timeout=180)
    rows = [line.split() for line in out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["200", "250"]
    assert all(float(row[1]) > 0 and float(row[3]) > 0 and row[5] == "True" for row in rows)
