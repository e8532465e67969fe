import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["dcgan_textbook", "resnet_cifar10"])
def test_placement_benchmark_times_every_layout(preset):
    """benchmarks/placement_layouts.py on the CPU: every layout builds, trains and is reported
    against the all-on-one-device reference (on a GPU the same script measures the real layouts)."""
    args = ["--device", "cpu", "--rounds", "1", "--seconds", "0.2", "--width", "8", "--batch", "16"]
    out = run_benchmark("placement_layouts", *args, "--preset", preset)
    rows = [line for line in out.splitlines() if line.endswith(")") and "x (" in line]
    assert [row.split("  ")[0] for row in rows] == [
        "all on cpu",
        "G on cpu, D on cpu",
        "D on cpu, G on cpu",
        "D split: convs on cpu, head on cpu",
        "G split: stem on cpu, rest on cpu",
    ]
    assert rows[0].split()[-2] == "1.00x" and all(float(row.split()[-3]) > 0 for row in rows)
