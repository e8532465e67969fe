"""int8: OpenVINO + NNCF and ONNX Runtime, its recorded calibration and quality, which kernels
really run in int8, and `hetgan bench --deploy`."""

import pytest

from tests.conftest import run_benchmark, strict_loads


@pytest.mark.slow
def test_deploy_benchmark_script_runs_end_to_end(digits_generator, tmp_path):
    """benchmarks/deploy_runtimes.py on a small run (one model: the second goes through the same
    code), so that the script cannot rot."""
    run = str(digits_generator)
    out = run_benchmark(
        "deploy_runtimes", "--default-run", run, "--models", "default", "--seconds", "0.4", "--rounds", "2",
        "--n", "100", "--out", str(tmp_path), timeout=600,
    )  # fmt: skip
    assert out.count("targets:") == 1 and out.count("best fp32 at batch 64:") == 1
    assert "openvino int8: " in out and "ConvolutionBackpropData" in out and "ConvTranspose" in out
    assert not (tmp_path / "deploy-dcgan_textbook.json").exists()
    record = strict_loads((tmp_path / "deploy-dcgan_mnist.json").read_text())
    assert [r["name"] for r in record["deploy"]["rows"]][0] == "torch fp32"
    # FLOPs counted on the graph each backend executes: OpenVINO's copy runs the layers of at most
    # 16 channels as sub-pixel convolutions (9/4 the multiply-adds; the fused output stage 4x).
    bound = record["compute_bound"]
    flops = bound["mflop_per_sample"]
    assert flops["onnxruntime"] == flops["torch"] < flops["openvino"] < 4 * flops["torch"]
    fp32 = {r["name"].split()[0]: r["img_per_s_64"] for r in record["deploy"]["rows"] if r["precision"] == "fp32"}
    for backend, gflop_s in bound["gflop_s_64"].items():
        assert gflop_s == pytest.approx(flops[backend] * fp32[backend] / 1e3, rel=0.01, abs=0.06)
    best = bound["two_x_eager_backend"]
    assert bound["two_x_eager_gflop_s"] == pytest.approx(2 * fp32["torch"] * flops[best] / 1e3, rel=0.01, abs=0.06)
