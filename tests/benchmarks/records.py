"""Checks shared by the benchmark scripts' tests, on the figures their `--json` writes."""

from __future__ import annotations

import math

import pytest


def assert_timed_against(setups: dict[str, dict], reference: str, rounds: int) -> None:
    """Every setup timed in each round at a positive, finite speed, with its median and per-round
    ratios over `reference` consistent with those rounds (so a script that mixed up setups or
    rounds, or divided the wrong way, fails); the reference's own ratio is exactly 1."""
    ref = setups[reference]["rounds"]
    assert setups[reference]["ratio"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    for name, s in setups.items():
        assert len(s["rounds"]) == rounds, name
        assert all(math.isfinite(v) and v > 0 for v in s["rounds"]), name
        assert min(s["rounds"]) <= s["median"] <= max(s["rounds"]), name
        ratios = sorted(v / r for v, r in zip(s["rounds"], ref, strict=True))
        assert s["ratio"]["min"] == pytest.approx(ratios[0]) and s["ratio"]["max"] == pytest.approx(ratios[-1]), name
        assert ratios[0] <= s["ratio"]["median"] <= ratios[-1], name


def assert_placement_layouts(record: dict, rounds: int) -> None:
    """benchmarks/placement_layouts.py's record on a CPU: every layout, in order, each with G and
    D on the CPU, timed against all on one device."""
    layouts = record["layouts"]
    assert list(layouts) == [
        "all on cpu",
        "G on cpu, D on cpu",
        "D on cpu, G on cpu",
        "D split: convs on cpu, head on cpu",
        "G split: stem on cpu, rest on cpu",
    ]
    assert all(layout["G"] == layout["D"] == ["cpu"] for layout in layouts.values())
    assert_timed_against(layouts, "all on cpu", rounds=rounds)
