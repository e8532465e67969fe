import json
import os
import subprocess
import sys

import pytest

from tests.benchmarks.records import assert_placement_layouts, assert_timed_against
from tests.conftest import ROOT


@pytest.mark.slow
def test_gpu_suite_runs_end_to_end_as_a_cpu_dry_run(tmp_path):
    """benchmarks/gpu_suite.sh with DEVICE=cpu and tiny settings: every step runs and writes its
    output, so the first session with a GPU does not lose its measurements to a broken script.
    It runs the interpreter this test runs in (PYTHON), which need not be first on PATH. The
    compiler is off (TORCHDYNAMO_DISABLE=1: the compile knob set and tune's compile candidate run
    eager), as CUDA graphs are on a CPU: a cold compile of two DCGAN steps would double the run, and
    torch.compile is checked where it is the subject (tests/models, the spectral norm and tune tests)."""
    root = ROOT
    tiny = {
        "PYTHON": sys.executable,
        "DEVICE": "cpu",
        "SECONDS_PER_WINDOW": "0.2",
        "ROUNDS": "1",
        "TUNE_SECONDS": "0.2",
        "TESTS": "0",
        "TORCHDYNAMO_DISABLE": "1",
    }
    env = {**os.environ, **tiny, "BATCHES": "8 16", "WIDTH": "8"}
    done = subprocess.run(["bash", "benchmarks/gpu_suite.sh", str(tmp_path / "ok")], env=env, cwd=root, timeout=500)
    assert done.returncode == 0
    outputs = {p.name for p in (tmp_path / "ok").iterdir()}
    benches = {"bench_bf16_b8": (8, 8), "bench_bf16_b16": (16, 8), "bench_bf16_wide": (16, 16)}
    steps = {"train_throughput.txt", "train_throughput.json", "step_knobs.txt", "placement.txt", "placement.json"}
    assert outputs == steps | {f"{b}.{e}" for b in benches for e in ("txt", "json")}
    for name, (batch, width) in benches.items():
        [row] = json.loads((tmp_path / "ok" / f"{name}.json").read_text())
        assert (row["batch_size"], row["config"]["model"]["width"], row["accel"]["precision"]) == (batch, width, "bf16")
    throughput = json.loads((tmp_path / "ok" / "train_throughput.json").read_text())
    assert throughput["device"] == "cpu" and len(throughput["setups"]) == 3
    assert_timed_against(throughput["setups"], "textbook loop", rounds=1)
    flops = throughput["flops_per_image"]  # hetgan skips D's weight gradients in the G step
    assert 0 < flops["hetgan"] < flops["textbook"] and throughput["peak_flop_s"] > 0
    assert "plain (fp32, eager)" in (tmp_path / "ok" / "step_knobs.txt").read_text()
    assert_placement_layouts(json.loads((tmp_path / "ok" / "placement.json").read_text()), rounds=1)


def test_gpu_suite_reports_a_failing_step_and_runs_the_others(tmp_path):
    """Every step of benchmarks/gpu_suite.sh, the optional ones too, each failing: each is reported
    in failed.txt with its output kept, the others still run, and the exit status says something
    failed. What is tested is the script's bookkeeping, so a stand-in interpreter fails each step
    at once, printing the arguments it was given (sh stands in for Python here, as it does for
    torchrun in the scaling benchmark's timeout test; the dry run above runs the real steps)."""
    failing = tmp_path / "failing-python"
    failing.write_text('#!/bin/sh\necho "$@"\nexit 3\n')
    failing.chmod(0o755)
    env = {**os.environ, "PYTHON": str(failing), "DEVICE": "cpu", "TESTS": "0", "BATCHES": "8 16"}
    env["STEPS"] = "throughput knobs_large profile placement placement_resnet overlap sn_compile"
    ran = ("train_throughput", "step_knobs_large", "profile", "placement", "placement_resnet", "overlap", "sn_compile")
    done = subprocess.run(["bash", "benchmarks/gpu_suite.sh", str(tmp_path / "bad")], env=env, cwd=ROOT, timeout=60)
    failed = (tmp_path / "bad" / "failed.txt").read_text()
    assert done.returncode == 1 and all(f"'{step}' failed with exit status 3" in failed for step in ran)
    assert {p.name for p in (tmp_path / "bad").iterdir()} == {"failed.txt", *(f"{step}.txt" for step in ran)}
    assert "--batch 16" in (tmp_path / "bad" / "step_knobs_large.txt").read_text()  # the largest of BATCHES
