"""hetgan compress: structured pruning, distillation, the search, and their bad inputs."""

from __future__ import annotations

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_subpixel_widths_script_prints_its_table(teacher):
    """benchmarks/subpixel_widths.py at a tiny scale: a row per generator, a column per precision
    and threshold, every cell a positive img/s."""
    out = run_benchmark(
        "subpixel_widths", "--run", str(teacher), "--widths", "16,8,4", "--thresholds", "0", "64",
        "--rounds", "1", "--seconds", "0.1",
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| teacher") or line.startswith("| [16,8,4]")]
    assert len(rows) == 2, out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 4 and all(float(c.replace(",", "")) > 0 for c in cells), row
