import json

import pytest

from tests.benchmarks.records import assert_placement_layouts
from tests.conftest import run_benchmark


@pytest.mark.slow
def test_placement_benchmark_times_every_layout_of_the_resnet(tmp_path):
    """benchmarks/placement_layouts.py on the CPU: every layout builds, trains and is reported
    against the all-on-one-device reference (on a GPU the same script measures the real layouts).
    The DCGAN (the script's default preset) is run by benchmarks/gpu_suite.sh's dry run
    (tests/benchmarks/test_gpu_suite.py), which checks its record alike."""
    args = ["--device", "cpu", "--rounds", "2", "--seconds", "0.2", "--width", "8", "--batch", "16"]
    run_benchmark("placement_layouts", *args, "--preset", "resnet_cifar10", "--json", str(tmp_path / "r.json"))
    assert_placement_layouts(json.loads((tmp_path / "r.json").read_text()), rounds=2)
