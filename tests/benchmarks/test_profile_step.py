import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_step_profile_splits_the_step_into_matrix_products_and_the_rest(tmp_path):
    """benchmarks/profile_step.py on the CPU: the step's op time, split by kind, and the top ops,
    among them the convolutions a DCGAN step is made of."""
    args = ["--device", "cpu", "--width", "8", "--batch", "16", "--steps", "3", "--set", "accel.channels_last=true"]
    run_benchmark("profile_step", *args, "--json", str(tmp_path / "r.json"))
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["device"] == "cpu" and record["knobs"] == ["accel.channels_last=true"]
    # Ops' own times do not overlap on a thread, and two threads at most record them (the caller's
    # and autograd's); the matrix products are part of them.
    assert 0 < record["matrix_ms_per_step"] < record["op_ms_per_step"] <= 2 * record["wall_ms_per_step"]
    top = record["top"]
    assert sum(op["ms_per_step"] for op in top) <= record["op_ms_per_step"] * (1 + 1e-9)
    convs = [op for op in top if op["name"].endswith(("convolution", "convolution_backward"))]
    assert convs and all(op["kind"] == "matrix" and op["calls_per_step"] > 0 for op in convs)
