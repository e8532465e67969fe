"""hetgan compress: structured pruning, distillation, the search, and their bad inputs."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_subpixel_widths_script_prints_its_table(teacher, tmp_path):
    """benchmarks/subpixel_widths.py at a tiny scale: a row per generator, a column per precision
    and threshold, every cell a positive img/s."""
    out = run_benchmark(
        "subpixel_widths", "--run", str(teacher), "--widths", "16,8,4", "--thresholds", "0", "64",
        "--rounds", "1", "--seconds", "0.1", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    rows = [line for line in out.splitlines() if line.startswith("| teacher") or line.startswith("| [16,8,4]")]
    assert len(rows) == 2, out  # the printed table: a row per generator
    speeds = json.loads((tmp_path / "r.json").read_text())["img_per_s"]
    assert len(speeds) == 2 and "[16,8,4]" in speeds
    for name, row in speeds.items():
        assert set(row) == {"fp32", "int8"} and all(set(cells) == {"0", "64"} for cells in row.values()), name
        assert all(math.isfinite(v) and v > 0 for cells in row.values() for v in cells.values()), name
