"""hetgan compress: structured pruning, distillation, the search, and their bad inputs."""

from __future__ import annotations

import json

import pytest

from hetgan.deploy.runtimes import cpu_threads
from hetgan.training.loop import train
from tests.conftest import run_benchmark, tiny_config


@pytest.mark.slow
def test_compress_targets_script_measures_given_students_end_to_end(tmp_path):
    """benchmarks/compress_targets.py --student at a tiny scale: the teacher (on the digits, so
    FID has its feature space) stands in as its own student, so the end-to-end step must quantise
    it and time all four models."""
    teacher = train(tiny_config("mnist5k"), out=tmp_path / "teacher", progress=False).run_dir
    out = run_benchmark(
        "compress_targets", "--default-run", str(teacher), "--student", str(teacher), "--out", str(tmp_path / "t"),
        "--n", "200", "--rounds", "1", "--seconds", "0.2", "--json", str(tmp_path / "r.json"),
    )  # fmt: skip
    e2e = json.loads((tmp_path / "r.json").read_text())["default"]["end_to_end"]
    assert "| default | given [] | 1.00x fewer |" in out
    models = {"teacher eager fp32", "student eager fp32", "student OpenVINO fp32", "student int8 OpenVINO"}
    assert set(e2e["img_s"]) == models and e2e["speedup"] > 0
    for modes in e2e["img_s"].values():  # each model one call at a time and one per core, and the better
        assert set(modes) == {"best"} | {f"{c} in flight" for c in {1, min(2, cpu_threads())}}
        assert all(v > 0 for v in modes.values()) and modes["best"] >= min(modes.values())
