"""int8: OpenVINO + NNCF and ONNX Runtime, its recorded calibration and quality, which kernels
really run in int8, and `hetgan bench --deploy`."""

import pytest

from tests.conftest import run_benchmark, strict_loads


@pytest.mark.slow
def test_deploy_benchmark_script_runs_end_to_end(digits_generator, tmp_path):
    """benchmarks/deploy_runtimes.py on a small run, so that the script cannot rot."""
    run = str(digits_generator)
    out = run_benchmark(
        "deploy_runtimes", "--default-run", run, "--textbook-run", run, "--seconds", "0.4", "--rounds", "2",
        "--n", "100", "--out", str(tmp_path), timeout=600,
    )  # fmt: skip
    assert out.count("targets:") == 2 and out.count("best fp32 at batch 64:") == 2
    assert "openvino int8: " in out and "ConvolutionBackpropData" in out and "ConvTranspose" in out
    record = strict_loads((tmp_path / "deploy-dcgan_mnist.json").read_text())
    assert [r["name"] for r in record["deploy"]["rows"]][0] == "torch fp32"
