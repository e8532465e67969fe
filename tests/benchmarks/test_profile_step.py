import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_step_profile_splits_the_step_into_matrix_products_and_the_rest():
    """benchmarks/profile_step.py on the CPU: the step's op time, split by kind, and the top ops,
    among them the convolutions a DCGAN step is made of."""
    args = ["--device", "cpu", "--width", "8", "--batch", "16", "--steps", "3", "--set", "accel.channels_last=true"]
    out = run_benchmark("profile_step", *args)
    assert "knobs: accel.channels_last=true" in out
    split = [line for line in out.splitlines() if line.startswith("  in ")]
    shares = {line.split()[1]: float(line.split("(")[1].rstrip("%)")) for line in split}
    assert set(shares) == {"matrix", "everything"} and sum(shares.values()) == pytest.approx(100, abs=1)
    assert 0 < shares["matrix"] < 100
    top = [line for line in out.splitlines() if line.rstrip().endswith(("convolution", "convolution_backward"))]
    assert top and all(" matrix " in line for line in top)
