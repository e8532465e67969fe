import json

import pytest

from tests.benchmarks.records import assert_timed_against
from tests.conftest import run_benchmark


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["dcgan_textbook", "resnet_cifar10"])
def test_placement_benchmark_times_every_layout(preset, tmp_path):
    """benchmarks/placement_layouts.py on the CPU: every layout builds, trains and is reported
    against the all-on-one-device reference (on a GPU the same script measures the real layouts)."""
    args = ["--device", "cpu", "--rounds", "2", "--seconds", "0.2", "--width", "8", "--batch", "16"]
    run_benchmark("placement_layouts", *args, "--preset", preset, "--json", str(tmp_path / "r.json"))
    layouts = json.loads((tmp_path / "r.json").read_text())["layouts"]
    assert list(layouts) == [
        "all on cpu",
        "G on cpu, D on cpu",
        "D on cpu, G on cpu",
        "D split: convs on cpu, head on cpu",
        "G split: stem on cpu, rest on cpu",
    ]
    assert all(layout["G"] == layout["D"] == ["cpu"] for layout in layouts.values())
    assert_timed_against(layouts, "all on cpu", rounds=2)
