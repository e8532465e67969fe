import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_spectral_norm_compile_benchmark_times_three_setups():
    """benchmarks/spectral_norm_compile.py, tiny: eager, compiled with the power iteration outside
    the graph (a break per layer) and compiled in one graph, each timed against eager."""
    out = run_benchmark("spectral_norm_compile", "--rounds", "1", "--seconds", "0.2", "--width", "8", "--batch", "8")
    rows = [line.split("  ") for line in out.splitlines() if line.endswith(")") and "x (" in line]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert [row[0] for row in rows] == ["eager", "compiled, iteration outside", "compiled, one graph"]
    layers = int(out.split("D has ")[1].split()[0])
    eager, outside, one_graph = (int(row[1]) for row in rows)
    assert eager == one_graph == 0 and outside >= layers  # each layer's iteration breaks the graph
    assert rows[0][3].startswith("1.00x") and all(float(row[2]) > 0 for row in rows)
