"""int8: OpenVINO + NNCF and ONNX Runtime, its recorded calibration and quality, which kernels
really run in int8, and `hetgan bench --deploy`."""

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import hetgan
from hetgan.artifact import save_generator
from hetgan.benchmarking.inference import layer_kernels
from hetgan.cli import main
from hetgan.deploy.load import load_generator
from hetgan.deploy.quantize import CALIBRATION_SEED, quantize
from hetgan.deploy.runtimes import cpu_threads
from hetgan.errors import ExportError, HetganError
from hetgan.models import build_models
from tests.conftest import strict_loads, tiny_config

FID_BOUND_PCT = 10  # int8 FID within 10 % of fp32's for the small digit generator below (n=500)


@pytest.mark.slow
def test_openvino_int8_keeps_quality_and_records_it(digits_generator, tmp_path):
    G = load_generator(digits_generator)
    result = quantize(G, tmp_path / "g8.xml", calibration_n=256, quality_n=500)
    q = result.quality
    assert q["n"] == 500 and "digits" in q["feature_space"]
    assert abs(q["fid_delta_pct"]) <= FID_BOUND_PCT, q
    assert q["class_tv"] < 0.1
    G8 = load_generator(tmp_path / "g8.xml")
    assert G8.precision == "int8" and G8.config == G.config
    recorded = G8.metadata["quantization"]  # a dict, as it was written (it was once JSON text)
    assert recorded["calibration"] == {"n": 256, "seed": CALIBRATION_SEED, "batch": 16, "law": "N(0, 1)"}
    assert "NNCF" in recorded["method"] and G8.metadata["quality"] == q
    fp32_bytes = 4 * sum(p.numel() for p in G.net.parameters())
    assert (tmp_path / "g8.bin").stat().st_size < 0.4 * fp32_bytes  # int8 weights: about a quarter
    # The same z gives nearly the same images, not just the same statistics.
    a, b = G.sample(64, seed=9), G8.sample(64, seed=9)
    assert (a - b).abs().mean() < 0.05


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (Linux /proc/cpuinfo; empty elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


def test_openvino_runs_transposed_convolutions_in_int8_where_the_cpu_has_vnni(digits_generator, tmp_path):
    """The claim docs/deployment.md makes, checked in OpenVINO's own profile of the compiled model:
    with AVX-512 VNNI (or AMX) every convolution, transposed or not, runs an int8 (`*_I8`) kernel; on
    a CPU with AVX2 only, the plain convolutions run in int8 and OpenVINO (oneDNN) runs the
    transposed ones in f32, so int8 gains little there. Either way the profile must say which."""
    quantize(load_generator(digits_generator), tmp_path / "g8.xml", calibration_n=64, quality_n=0)
    kernels = layer_kernels(load_generator(tmp_path / "g8.xml"))
    convs = [k for k in kernels if k["op"] in ("ConvolutionBackpropData", "Convolution", "FullyConnected")]
    int8 = {k["layer"] for k in convs if k["kernel"].lower().endswith("i8")}
    assert any(k["op"] == "ConvolutionBackpropData" for k in convs) and len(convs) >= 3, convs
    if cpu_flags() & {"avx512_vnni", "amx_int8"}:
        assert int8 == {k["layer"] for k in convs}, convs
    else:
        assert all((k["layer"] in int8) == (k["op"] != "ConvolutionBackpropData") for k in convs), convs


def test_onnxruntime_int8_of_a_conv_generator_keeps_transposed_convolutions_in_fp32(digits_generator, tmp_path):
    result = quantize(load_generator(digits_generator), tmp_path / "g8.onnx", calibration_n=64, quality_n=0)
    assert "QDQ" in result.method and result.quality == {"measured": False}
    ops = {k["op"] for k in layer_kernels(load_generator(tmp_path / "g8.onnx"))}
    assert "ConvTranspose" in ops and "DequantizeLinear" in ops  # dequantise -> fp32 ConvTranspose


def test_onnxruntime_dynamic_int8_for_linear_generators(tmp_path):
    cfg = tiny_config("ring8", arch="mlp")
    G, _ = build_models(cfg)
    path = save_generator(G, cfg, tmp_path / "g.safetensors")
    result = quantize(load_generator(path), tmp_path / "g8.onnx", quality_n=500)
    assert "dynamic" in result.method and result.calibration["n"] == 0
    assert result.quality["modes_fp32"] >= 0 and "modes_int8" in result.quality
    G8 = load_generator(tmp_path / "g8.onnx")
    ops = {k["op"] for k in layer_kernels(G8)}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"}, ops  # the products run in int8
    assert (G8.sample(100, seed=1) - load_generator(path).sample(100, seed=1)).abs().max() < 0.05


@pytest.mark.slow
def test_bad_quantize_requests(tmp_path, digits_npz, capsys):
    cfg = tiny_config(f"npz:{digits_npz}")
    G, _ = build_models(cfg)
    path = str(save_generator(G, cfg, tmp_path / "g.safetensors"))
    with pytest.raises(ExportError, match="int8 goes to FILE.xml .* or FILE.onnx"):
        quantize(load_generator(path), tmp_path / "g.pt")
    with pytest.raises(HetganError, match="--calibration-n must be at least 1, got 0"):
        quantize(load_generator(path), tmp_path / "g.xml", calibration_n=0)
    assert main(["quantize", "--artifact", path, "--out", str(tmp_path / "g.xml")]) == 2
    err = capsys.readouterr().err
    assert "no feature network for data" in err and "pass --quality-n 0" in err
    assert not (tmp_path / "g.xml").exists() and not (tmp_path / "g.bin").exists()
    assert main(["quantize", "--artifact", path, "--out", str(tmp_path / "g.xml"), "--quality-n", "0"]) == 0
    assert "quality: not measured" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_deploy_table_and_json(digits_generator, tmp_path, capsys):
    (tmp_path / "extra").mkdir()
    main(["export", "--run", str(digits_generator), "--format", "onnx", "--out", str(tmp_path / "extra" / "mine.onnx")])
    capsys.readouterr()
    out = tmp_path / "deploy.json"
    args = ["--artifact", str(digits_generator / "generator.safetensors"), str(tmp_path / "extra" / "mine.onnx")]
    threads = torch.get_num_threads()
    assert (
        main(["bench", "--deploy", *args, "--seconds", "0.6", "--rounds", "2", "--n", "100", "--json", str(out)]) == 0
    )
    assert torch.get_num_threads() == threads  # it timed on every core this process may use, then put back ours
    table = capsys.readouterr().out
    record = strict_loads(out.read_text())
    rows = {r["name"]: r for r in record["deploy"]["rows"]}
    expected = ["torch fp32", "onnxruntime fp32", "openvino fp32", "openvino int8", "onnxruntime int8"]
    assert list(rows) == [*expected, "mine.onnx (onnxruntime)"]
    assert rows["torch fp32"]["speedup_64"] == 1 and rows["torch fp32"]["max_abs_error"] == 0
    for name, row in rows.items():
        assert row["img_per_s_64"] > 0 and row["img_per_s_256"] > 0 and name in table
        if cpu_threads() >= 2:  # two calls in flight: two streams, or torch's threads split in two
            assert row["img_per_s_64_x2"] > 0 and "b64 x2" in table
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["size_mib"] > 0 and row["peak_rss_mib"] > 10 and row["quality"] > 0
    for name in ("onnxruntime fp32", "openvino fp32", "mine.onnx (onnxruntime)"):
        assert rows[name]["max_abs_error"] < 1e-4
        assert rows[name]["quality"] == pytest.approx(rows["torch fp32"]["quality"], rel=1e-3)
    assert rows["openvino int8"]["size_mib"] < 0.5 * rows["openvino fp32"]["size_mib"]
    # torch and hetgan are not imported by a runtime's memory probe: it needs far less.
    assert rows["onnxruntime fp32"]["peak_rss_mib"] < rows["torch fp32"]["peak_rss_mib"]
    assert record["machine"]["hetgan"] == hetgan.__version__ and np.isfinite(rows["openvino int8"]["speedup_64"])


def test_bench_deploy_refuses_training_flags_and_exported_references(tmp_path, capsys):
    assert main(["bench", "--deploy", "--run", str(tmp_path), "--preset", "mlp_mnist"]) == 2
    assert "--preset: training settings" in capsys.readouterr().err
    (tmp_path / "g.onnx").write_bytes(b"")
    assert main(["bench", "--deploy", "--artifact", str(tmp_path / "g.onnx")]) == 2
    assert "needs the run or its generator.safetensors first" in capsys.readouterr().err
    assert main(["bench", "--run", str(tmp_path)]) == 2
    assert "--deploy with --run RUN" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_past_its_quality_bound_is_refused_unless_forced(digits_generator, tmp_path, capsys):
    """quantize measured the int8 model's quality but never acted on it: past --max-quality-loss
    it exits non-zero and writes nothing, unless --force. A bound of -100 % (FID at least halved)
    no int8 model can meet."""
    from hetgan.cli import main

    argv = ["quantize", "--run", str(digits_generator), "--calibration-n", "32", "--quality-n", "200"]
    out = tmp_path / "g8.xml"
    assert main([*argv, "--out", str(out), "--max-quality-loss", "-100"]) == 2
    err = capsys.readouterr().err
    assert "over the bound of -100 %: nothing was written" in err and "--force" in err
    assert not out.exists() and not out.with_suffix(".bin").exists()


def test_the_quality_gate_records_the_loss_and_the_bound_either_way():
    from hetgan.deploy.quantize import QuantizeResult, gate
    from hetgan.errors import QualityError

    images = {"n": 200, "feature_space": "digits", "fid_fp32": 10.0, "fid_int8": 10.5, "fid_delta_pct": 5.0,
              "class_tv": 0.01}  # fmt: skip
    within = gate(images, 10.0, force=False)
    assert (within["loss_pct"], within["max_loss_pct"]) == (5.0, 10.0)
    with pytest.raises(QualityError, match=r"loses 5.00 % .*FID 10.000 -> 10.500.*over the bound of 4 %"):
        gate(images, 4.0, force=False)
    forced = gate(images, 4.0, force=True)
    check = type("Check", (), {"summary": lambda self: "checked"})()
    lines = QuantizeResult([], "m", {"n": 0, "law": "none"}, forced, check).summary()
    assert "quality loss 5.00 %: OVER (written with --force) the bound of 4 %" in lines
    points = {"n": 200, "modes_fp32": 8, "modes_int8": 7, "hq_fp32": 0.9, "hq_int8": 0.9}
    with pytest.raises(QualityError, match="modes 8 -> 7"):  # a lost mode is a total loss
        gate(points, 10.0, force=False)
    assert gate({"measured": False}, 10.0, force=False) == {"measured": False}  # nothing to gate


@pytest.mark.parametrize("imported_first", [True, False])
def test_nncf_sends_no_telemetry_while_hetgan_quantises(imported_first):
    """In a process without pytest (NNCF turns its telemetry off by itself under pytest): whether
    the user imported NNCF before hetgan or not, hetgan calls it with its telemetry stubbed, puts
    back what was there, and leaves no NNCF_CI behind for child processes."""
    pytest.importorskip("nncf")
    script = f"""
import os, sys
assert "pytest" not in sys.modules and "NNCF_CI" not in os.environ
if {imported_first}:
    import nncf.telemetry.decorator as d
    assert type(d.telemetry).__name__ == "NNCFTelemetry", type(d.telemetry)
from hetgan.deploy.quantize import nncf_without_telemetry
with nncf_without_telemetry() as nncf:
    from nncf.telemetry import decorator, wrapper
    for held in (decorator.telemetry, wrapper.telemetry, nncf.telemetry.telemetry):
        assert isinstance(held, wrapper.NNCFTelemetryStub) and not isinstance(held, wrapper.NNCFTelemetry)
assert "NNCF_CI" not in os.environ
print(type(decorator.telemetry).__name__)
"""
    env = {k: v for k, v in os.environ.items() if k != "NNCF_CI"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == ("NNCFTelemetry" if imported_first else "MagicMock")  # NNCF's stub


def test_bench_deploy_says_when_the_machine_was_too_noisy_to_trust():
    """The reference's own speed over the rounds decides: steady rounds give no warning; a 2x spread
    (another process took a core for some rounds) is said, with what to do."""
    from hetgan.benchmarking.inference import NOISY_SPREAD, Row, noise

    def rows(speeds):
        return [Row("torch fp32", None, [], speeds={64: speeds})]

    steady = noise(rows([1000.0, 1050.0, 980.0]))
    assert steady["reference_spread"] == pytest.approx(1050 / 980) and steady["warning"] is None
    busy = noise(rows([1000.0, 500.0, 990.0]))
    assert busy["reference_spread"] == pytest.approx(2.0) and NOISY_SPREAD < 2.0
    assert "varied 2.0x between rounds" in busy["warning"] and "rerun on an idle machine" in busy["warning"]


def test_bench_deploy_takes_a_pretrained_generator_by_name(tmp_path, monkeypatch, capsys):
    """`--pretrained NAME` benches the packaged file, as the other commands that read a generator
    do; with --run or --artifact as well it is refused (the library call is stood in for)."""
    from hetgan.pretrained import pretrained

    seen = []
    monkeypatch.setattr(hetgan, "bench_deploy", lambda source, extra, *a, **kw: seen.append((source, extra)) or {})
    monkeypatch.setattr("hetgan.cli.bench.format_deploy", lambda record: "table")
    assert main(["bench", "--deploy", "--pretrained", "mnist", "--quick"]) == 0
    assert seen == [(str(pretrained("mnist").path), [])]
    assert main(["bench", "--deploy", "--pretrained", "mnist", "--run", str(tmp_path)]) == 2
    assert "one trained generator: --deploy with --run RUN, --artifact PATH" in capsys.readouterr().err
    assert len(seen) == 1


def test_bench_deploy_quick_takes_the_short_settings(tmp_path, monkeypatch, capsys):
    """`--quick` times fewer, shorter rounds and scores fewer samples, whatever --seconds, --rounds
    and --n say (the library call is stood in for: its timing is the benchmark's business)."""
    from hetgan.cli.bench import QUICK

    seen = {}

    def bench_deploy(source, extra, seconds, rounds, n, **kw):
        seen.update(seconds=seconds, rounds=rounds, n=n)
        raise HetganError("stand-in")

    monkeypatch.setattr(hetgan, "bench_deploy", bench_deploy)
    args = ["bench", "--deploy", "--run", str(tmp_path), "--quick", "--seconds", "30", "--n", "5000"]
    assert main(args) == 2 and "stand-in" in capsys.readouterr().err
    assert seen == QUICK and QUICK["seconds"] * QUICK["rounds"] <= 10 and QUICK["n"] <= 1000
