"""Export to ONNX and OpenVINO IR, the runtimes behind load_generator, and the layer rewrites."""

import json
import logging
import subprocess
import sys
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import hetgan
from hetgan.artifact import save_generator
from hetgan.cli import main
from hetgan.deploy import export as E
from hetgan.deploy.load import load_generator
from hetgan.deploy.rewrite import SubPixelConv, SubPixelOutput, for_inference, linear_from_deconv
from hetgan.deploy.runtimes import OnnxRuntimeGenerator, OpenVINOGenerator
from hetgan.errors import CheckpointError, ConfigError, ExportError, HetganError
from hetgan.models import build_models
from tests.conftest import GPU, tiny_config

FAMILIES = {
    "mlp-points": ("mlp", "ring8", 1, 32),
    "maxout-points": ("maxout", "grid25", 1, 32),
    "mlp-images": ("mlp", "npz", 1, 32),
    "dcgan32-grey": ("dcgan", "npz", 1, 32),
    "dcgan64-rgb": ("dcgan", "npz", 3, 64),
    "resnet-rgb": ("resnet", "npz", 3, 32),
}


def artifact(tmp_path, digits_npz, arch, spec, channels, resolution):
    """A generator artifact with random weights and BatchNorm statistics that are not the identity."""
    cfg = tiny_config(f"npz:{digits_npz}" if spec == "npz" else spec, arch=arch)
    cfg.data.channels, cfg.data.resolution = channels, resolution
    G, _ = build_models(cfg.validate())
    return save_generator(G, cfg, tmp_path / "g.safetensors", run_id="00007-tiny")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.slow
def test_every_family_exports_to_both_formats_and_samples_alike(family, tmp_path, digits_npz):
    path = artifact(tmp_path, digits_npz, *FAMILIES[family])
    G = load_generator(path)
    want = G.sample(70, seed=4)  # 256 per batch: batches of 70 through the dynamic axis
    for fmt, name in (("onnx", "g.onnx"), ("openvino", "g.xml")):
        result = E.export(G, fmt, tmp_path / name)
        assert set(result.check.errors) == {1, 2, 64} and result.check.max_abs_error <= E.TOLERANCE
        exported = load_generator(tmp_path / name)
        assert exported.backend == {"onnx": "onnxruntime", "openvino": "openvino"}[fmt]
        got = exported.sample(70, seed=4)
        assert got.shape == want.shape and (got - want).abs().max() <= E.TOLERANCE
        assert exported.config == G.config and exported.run_id == "00007-tiny" and exported.precision == "fp32"
    assert not (tmp_path / "g.onnx.data").exists()  # one self-contained file


@pytest.mark.slow
def test_onnx_metadata_says_what_the_file_is(tmp_path, digits_npz):
    G = load_generator(artifact(tmp_path, digits_npz, "dcgan", "npz", 3, 64))
    E.export(G, "onnx", tmp_path / "g.onnx")
    model = onnx.load(tmp_path / "g.onnx")
    meta = {p.key: p.value for p in model.metadata_props}
    assert (
        meta["hetgan.format"] == "hetgan.exported-generator/1" and meta["hetgan.hetgan_version"] == hetgan.__version__
    )
    assert json.loads(meta["hetgan.config"])["model"]["arch"] == "dcgan" and meta["hetgan.z_dim"] == "8"
    assert json.loads(meta["hetgan.output"]) == {"name": "sample", "shape": ["batch", 3, 64, 64], "range": [-1, 1]}
    assert meta["hetgan.run_id"] == "00007-tiny"
    (z,) = model.graph.input
    assert z.name == "z" and z.type.tensor_type.shape.dim[0].dim_param  # a named, dynamic batch axis


@pytest.mark.slow
def test_run_directory_exports_carry_its_name(tmp_path, tiny):
    run = hetgan.train(tiny, out=tmp_path / "00003-tiny", progress=False).run_dir
    assert main(["export", "--run", str(run), "--format", "onnx", "--out", str(tmp_path / "x" / "g.onnx")]) == 0
    assert load_generator(tmp_path / "x" / "g.onnx").run_id == "00003-tiny"


def test_rewrites_are_exact():
    torch.manual_seed(0)
    for bias in (False, True):
        up = nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=bias).double()
        x = torch.randn(2, 6, 5, 7, dtype=torch.double)
        assert torch.allclose(SubPixelConv(up)(x), up(x), atol=1e-12, rtol=0)
        first = nn.ConvTranspose2d(5, 4, 4, 1, 0, bias=bias).double()
        z = torch.randn(3, 5, dtype=torch.double)
        assert torch.allclose(linear_from_deconv(first)(z), first(z[:, :, None, None]), atol=1e-12, rtol=0)
    # with the BatchNorm (eval mode, trained-looking statistics) and ReLU after it fused in
    up = nn.ConvTranspose2d(6, 3, 4, 2, 1, bias=False).double()
    bn = nn.BatchNorm2d(3).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(-2, 2), bn.bias.normal_()
    x = torch.randn(2, 6, 5, 7, dtype=torch.double)
    fused = SubPixelConv(up, bn, relu=True)
    assert torch.allclose(fused(x), torch.relu(bn(up(x))), atol=1e-12, rtol=0)
    assert (fused(x) == 0).any() and (fused(x) < 0).sum() == 0


@pytest.mark.parametrize(("c_out", "bias", "relu"), [(1, False, False), (3, True, True)])
def test_two_subpixel_stages_as_one_output_stage_are_the_same_function(c_out, bias, relu):
    torch.manual_seed(c_out)
    first = SubPixelConv(nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=True).double(), None, relu=True)
    output = SubPixelConv(nn.ConvTranspose2d(5, c_out, 4, 2, 1, bias=bias).double(), None, relu=relu)
    x = torch.randn(2, 6, 5, 7, dtype=torch.double)  # not square: rows and columns kept apart
    fused = SubPixelOutput(first, output)
    assert fused.conv2.out_channels == 16 * c_out and isinstance(fused.shuffle, nn.PixelShuffle)
    assert fused(x).shape == (2, c_out, 20, 28)
    assert torch.allclose(fused(x), output(first(x)), atol=1e-12, rtol=0)


def test_inference_copy_of_a_dcgan_generator_is_the_same_function(tmp_path, digits_npz):
    G = load_generator(artifact(tmp_path, digits_npz, "dcgan", "npz", 1, 32)).net
    fast = for_inference(G)
    assert not any(isinstance(m, nn.ConvTranspose2d) and m.out_channels == 1 for m in fast.modules())
    assert isinstance(fast.first[0], nn.Linear) and isinstance(fast.first[1], nn.ReLU)  # BN folded into it
    assert not isinstance(fast.rest[0], nn.BatchNorm2d)
    z = torch.randn(9, 8)
    with torch.no_grad():
        assert (fast(z) - G(z)).abs().max() < 1e-5
    assert isinstance(G.net[0], nn.ConvTranspose2d)  # the original is left as it was
    every = for_inference(G, subpixel_max_channels=10**6)  # every upsampling layer, BN and ReLU fused
    assert not any(isinstance(m, nn.ConvTranspose2d | nn.BatchNorm2d) for m in every.modules())
    # the first sub-pixel stage stays; the second and the output layer become one
    assert sum(isinstance(m, SubPixelConv) for m in every.modules()) == 1
    assert sum(isinstance(m, SubPixelOutput) for m in every.modules()) == 1
    plain = for_inference(G, subpixel_max_channels=0)
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in plain.modules()) == 3
    with torch.no_grad():
        assert (every(z) - G(z)).abs().max() < 1e-5 and (plain(z) - G(z)).abs().max() < 1e-5


@pytest.mark.slow
def test_exports_are_checked_and_the_unoptimised_graph_is_the_fallback(tmp_path, digits_npz, monkeypatch, caplog):
    """An exporter that folds BatchNorm wrongly (as reported upstream) must not yield a silent file."""
    G = load_generator(artifact(tmp_path, digits_npz, "dcgan", "npz", 1, 32))
    trace = E.trace_onnx

    def broken_when_optimised(G, optimize, target="onnxruntime"):
        model = trace(G, optimize, target)
        if optimize:  # a folding bug: one weight off
            init = model.graph.initializer[0]
            arr = onnx.numpy_helper.to_array(init) + 0.5
            init.CopyFrom(onnx.numpy_helper.from_array(arr.astype(np.float32), init.name))
        return model

    monkeypatch.setattr(E, "trace_onnx", broken_when_optimised)
    monkeypatch.setattr(E, "_verified", OrderedDict())  # traced here, not an earlier export of this G
    with caplog.at_level(logging.WARNING, logger="hetgan"):
        result = E.export(G, "onnx", tmp_path / "g.onnx")
    assert "failed its check" in caplog.text and result.check.max_abs_error <= E.TOLERANCE
    assert (load_generator(tmp_path / "g.onnx").sample(8) - G.sample(8)).abs().max() <= E.TOLERANCE

    monkeypatch.setattr(E, "trace_onnx", lambda G, optimize, target="onnxruntime": broken_when_optimised(G, True))
    E._verified.clear()  # the export above is remembered: forget it, so that this one is traced
    (tmp_path / "old.onnx").write_bytes(b"the previous export")
    with pytest.raises(ExportError, match="does not match PyTorch.*max abs error.*Nothing was written"):
        E.export(G, "onnx", tmp_path / "old.onnx", overwrite=True)  # asked to replace it, but the check fails
    assert (tmp_path / "old.onnx").read_bytes() == b"the previous export"


def test_an_export_is_traced_once_per_process_until_a_weight_changes(tmp_path, digits_npz, monkeypatch):
    """export, then a runtime loaded from the artifact (as bench --deploy and serve do): one trace
    for each graph. Targets that rewrite the same layers share it (OpenVINO's and the int8 source
    graph here, every target for a network hetgan does not rewrite); other layers rewritten, or a
    changed weight: a new one."""
    G = load_generator(artifact(tmp_path, digits_npz, "dcgan", "npz", 1, 32))  # deconvolutions to 16, 8, 4, 1
    traced, trace = [], E.trace_onnx
    monkeypatch.setattr(E, "trace_onnx", lambda G, opt, target: traced.append(target) or trace(G, opt, target))
    monkeypatch.setattr(E, "_verified", OrderedDict())
    E.export(G, "onnx", tmp_path / "a.onnx")
    E.export(G, "onnx", tmp_path / "b.onnx")
    runtime = load_generator(tmp_path / "g.safetensors", backend="onnxruntime")
    assert traced == ["onnxruntime"] and (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    assert torch.equal(runtime.sample(4, seed=1), load_generator(tmp_path / "a.onnx").sample(4, seed=1))
    E.export(G, "openvino", tmp_path / "g.xml")  # the layers to 8, 4 and 1 channels as sub-pixel convolutions
    assert E.SUBPIXEL_FOR["openvino"] != E.SUBPIXEL_FOR["openvino-int8"]  # but they rewrite the same layers
    assert E.onnx_bytes(G, "openvino-int8") == E.onnx_bytes(G, "openvino") != E.onnx_bytes(G, "onnxruntime")
    monkeypatch.setitem(E.SUBPIXEL_FOR, "openvino", 4)  # the layers to 4 and 1 channels: another graph
    E.export(G, "openvino", tmp_path / "g.xml", overwrite=True)
    with torch.no_grad():
        next(G.net.parameters())[0] += 1.0
    E.export(G, "onnx", tmp_path / "c.onnx")
    assert traced == ["onnxruntime", "openvino", "openvino", "onnxruntime"]
    assert (tmp_path / "c.onnx").read_bytes() != (tmp_path / "a.onnx").read_bytes()
    (tmp_path / "mlp").mkdir()
    mlp = load_generator(artifact(tmp_path / "mlp", digits_npz, "mlp", "ring8", 1, 32))
    assert len({E.export_key(mlp, target, E.TOLERANCE) for target in E.SUBPIXEL_FOR}) == 1


@pytest.mark.slow
def test_corrupt_or_foreign_model_files_are_clear_errors(tmp_path, digits_npz):
    G = load_generator(artifact(tmp_path, digits_npz, "mlp", "ring8", 1, 32))
    E.export(G, "onnx", tmp_path / "g.onnx")
    E.export(G, "openvino", tmp_path / "g.xml")
    data = (tmp_path / "g.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.onnx: ONNX Runtime cannot load this model .*hetgan export"):
        load_generator(tmp_path / "cut.onnx")
    foreign = onnx.load_from_string(data)
    del foreign.metadata_props[:]
    (tmp_path / "foreign.onnx").write_bytes(foreign.SerializeToString())
    with pytest.raises(CheckpointError, match="foreign.onnx: not a hetgan generator"):
        load_generator(tmp_path / "foreign.onnx")
    E.export(load_generator(artifact(tmp_path, digits_npz, "mlp", "ring8", 1, 32)), "openvino", tmp_path / "h.xml")
    (tmp_path / "g.bin").write_bytes((tmp_path / "h.bin").read_bytes())  # another export's weights
    with pytest.raises(CheckpointError, match="g.bin is not the weights file exported with it"):
        load_generator(tmp_path / "g.xml")
    (tmp_path / "h.bin").unlink()
    with pytest.raises(CheckpointError, match="its weights file h.bin is missing"):
        load_generator(tmp_path / "h.xml")
    (tmp_path / "junk.xml").write_text("<not a model")
    (tmp_path / "junk.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"junk.xml: OpenVINO cannot read it: .*junk.bin \(0 bytes\) is damaged"):
        load_generator(tmp_path / "junk.xml")
    weights = (tmp_path / "g.bin").read_bytes()
    (tmp_path / "g.bin").write_bytes(weights[: len(weights) // 2])  # a copy cut short
    with pytest.raises(CheckpointError, match=r"g.xml: OpenVINO cannot read it: .*g.bin .* damaged or truncated") as e:
        load_generator(tmp_path / "g.xml")
    assert "core.cpp" not in str(e.value)  # the runtime's source location says nothing to a user
    with pytest.raises(CheckpointError, match="an exported model runs on onnxruntime or openvino, not torch"):
        load_generator(tmp_path / "g.onnx", backend="torch")
    with pytest.raises(ConfigError, match="an OpenVINO IR runs on the openvino backend only"):
        load_generator(tmp_path / "h.xml", backend="onnxruntime")


def test_wrong_shaped_input_is_a_clear_error(tmp_path, digits_npz):
    G = load_generator(artifact(tmp_path, digits_npz, "dcgan", "npz", 1, 32))
    E.export(G, "onnx", tmp_path / "g.onnx")
    for runtime in (load_generator(tmp_path / "g.onnx"), load_generator(tmp_path / "g.onnx", backend="openvino")):
        for z in (torch.randn(4, 9), torch.randn(4), torch.zeros(2, 8, dtype=torch.long)):
            with pytest.raises(HetganError, match=r"z must be a float tensor \[batch, 8\]"):
                runtime.generate(z)


@pytest.mark.slow
def test_a_run_on_another_backend_is_exported_in_memory(tmp_path, digits_npz):
    path = artifact(tmp_path, digits_npz, "resnet", "npz", 3, 32)
    want = load_generator(path).sample(5, seed=1)
    for backend, kind in (("onnxruntime", OnnxRuntimeGenerator), ("openvino", OpenVINOGenerator)):
        G = load_generator(path, backend=backend, threads=1)
        assert isinstance(G, kind) and (G.sample(5, seed=1) - want).abs().max() <= E.TOLERANCE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits.npz", "g.safetensors"]  # nothing written


@pytest.mark.slow
def test_runtimes_with_two_streams_take_two_calls_at_once_and_answer_alike(tmp_path, digits_npz):
    path = artifact(tmp_path, digits_npz, "dcgan", "npz", 1, 32)
    zs = [torch.randn(16, 8, generator=torch.Generator().manual_seed(i)) for i in range(12)]
    for backend in ("onnxruntime", "openvino"):
        one = load_generator(path, backend=backend, threads=2)
        two = load_generator(path, backend=backend, threads=2, streams=2)
        want = [one.generate(z) for z in zs]
        with ThreadPoolExecutor(2) as pool:  # one infer request shared by two threads would fail here
            got = list(pool.map(two.generate, zs))
        assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) <= E.TOLERANCE
        if backend == "openvino":
            assert two.compiled.get_property("NUM_STREAMS") == 2 and two.requests.qsize() == 2
        else:
            assert two.session.get_session_options().intra_op_num_threads == 1  # each call on 1 of the 2


def test_bad_export_requests(tmp_path, digits_npz, capsys):
    path = str(artifact(tmp_path, digits_npz, "mlp", "ring8", 1, 32))
    (tmp_path / "file").write_text("")
    cases = {
        ("--format", "tflite", "--out", str(tmp_path / "g.onnx")): "unknown export format; valid: onnx, openvino",
        ("--format", "onnx", "--out", str(tmp_path / "g.xml")): "an ONNX export is a .onnx file; name it e.g.",
        ("--format", "onnx", "--out", str(tmp_path / "file" / "g.onnx")): "is a file, so no folder can be made there",
        ("--format", "onnx", "--out", str(tmp_path)): "that is a folder; name a file in it",
        ("--format", "onnx", "--fp16-weights", "--out", str(tmp_path / "g.onnx")): "fp16 weights are an OpenVINO",
    }
    for args, message in cases.items():
        assert main(["export", "--artifact", path, *args]) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "notgen.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    assert (
        main(["export", "--artifact", str(tmp_path / "notgen.safetensors"), "--format", "onnx", "--out", "x.onnx"]) == 2
    )
    assert "not a hetgan generator artifact" in capsys.readouterr().err
    assert not (tmp_path / "g.onnx").exists()


def test_a_missing_runtime_names_the_extra_to_install(tmp_path, digits_npz, monkeypatch, capsys):
    path = str(artifact(tmp_path, digits_npz, "mlp", "ring8", 1, 32))
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: import raises ImportError
    assert main(["export", "--artifact", path, "--format", "openvino", "--out", str(tmp_path / "g.xml")]) == 2
    err = capsys.readouterr().err
    assert "needs the package 'openvino', which is not installed" in err and "pip install 'hetgan[deploy]'" in err


@pytest.mark.slow
def test_fp16_weights_halve_the_ir_and_stay_close(tmp_path, digits_npz):
    G = load_generator(artifact(tmp_path, digits_npz, "dcgan", "npz", 3, 64))
    E.export(G, "openvino", tmp_path / "f32.xml")
    result = E.export(G, "openvino", tmp_path / "f16.xml", fp16_weights=True)
    assert result.check.max_abs_error <= E.FP16_WEIGHTS_TOLERANCE
    ratio = (tmp_path / "f16.bin").stat().st_size / (tmp_path / "f32.bin").stat().st_size
    assert 0.45 < ratio < 0.55
    assert load_generator(tmp_path / "f16.xml").precision == "fp16-weights"


@pytest.mark.slow
def test_sample_and_eval_with_a_backend_match_torch(tmp_path, capsys):
    run = hetgan.train(tiny_config("mnist5k"), out=tmp_path / "run", progress=False).run_dir
    E.export(load_generator(run), "onnx", tmp_path / "g.onnx")
    outs = {}
    for name, args in {
        "torch": ["--run", str(run)],
        "ort": ["--artifact", str(tmp_path / "g.onnx")],
        "ov": ["--run", str(run), "--backend", "openvino", "--threads", "1"],
    }.items():
        assert main(["sample", *args, "--n", "40", "--seed", "3", "--out", str(tmp_path / f"{name}.npz")]) == 0
        outs[name] = np.load(tmp_path / f"{name}.npz")["images"].astype(int)
    for name in ("ort", "ov"):  # uint8 images: a rounding boundary may move one level
        assert np.abs(outs[name] - outs["torch"]).max() <= 1 and (outs[name] != outs["torch"]).mean() < 0.01
    capsys.readouterr()
    scores = {}
    for name, args in {"torch": ["--run", str(run)], "ort": ["--artifact", str(tmp_path / "g.onnx")]}.items():
        assert main(["eval", *args, "--n", "200", "--metrics", "fid", "--json", str(tmp_path / f"{name}.json")]) == 0
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())["fid"]
    assert scores["ort"] == pytest.approx(scores["torch"], rel=1e-3)


def test_tensorrt_without_a_gpu_build_names_the_install(tmp_path, digits_npz):
    import onnxruntime

    if "TensorrtExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has TensorRT")
    path = artifact(tmp_path, digits_npz, "mlp", "ring8", 1, 32)
    with pytest.raises(ConfigError, match="no TensorrtExecutionProvider.*pip install onnxruntime-gpu"):
        load_generator(path, backend="tensorrt")


def test_the_gpu_error_names_the_gpu_extra_and_its_packages():
    import re
    import tomllib
    from pathlib import Path

    from hetgan.deploy.runtimes import GPU_HINT

    pyproject = Path(__file__).parents[2] / "pyproject.toml"
    extra = tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["gpu"]
    assert "`gpu` extra" in GPU_HINT
    for requirement in extra:
        assert re.split("[<>=]", requirement)[0] in GPU_HINT, requirement


@GPU
def test_onnxruntime_cuda_and_tensorrt_match_torch(tmp_path, digits_npz):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    path = artifact(tmp_path, digits_npz, "dcgan", "npz", 3, 64)
    want = load_generator(path).sample(64, seed=2)
    cuda = load_generator(path, backend="onnxruntime", device="cuda")
    assert cuda.providers[0] == "CUDAExecutionProvider"
    assert (cuda.sample(64, seed=2) - want).abs().max() < 1e-3
    if "TensorrtExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime-gpu has no TensorRT provider (pip install 'tensorrt-cu12<11')")
    trt = load_generator(path, backend="tensorrt", device="cuda")
    assert trt.providers[0] == "TensorrtExecutionProvider"
    # The fp16 engine against fp32 ONNX Runtime on the same GPU. fp16 rounds to 2**-11 (4.9e-4)
    # relative, and this DCGAN-64 has 5 layers that round their weights and their inputs (10
    # roundings); with accumulation in fp32 and BN folded in, each rounding's error reaches the tanh
    # output (|x| <= 1) times the gain of the layers after it. 2e-2 allows 40 such units: a gain of
    # 4 per rounding. A wrong engine (a layer dropped, channels swapped) is off by 0.1 to 2.
    fp32 = cuda.sample(64, seed=2)
    fp16 = trt.sample(64, seed=2)
    assert 0 < (fp16 - fp32).abs().max() < 2e-2
    assert (fp16 - fp32).abs().mean() < 2e-3  # the typical error: a tenth of the bound
    cache = tmp_path / "g.trt-cache"
    assert any(cache.iterdir()), "no engine cached in <model>.trt-cache/"
    again = load_generator(path, backend="tensorrt", device="cuda")  # from the cached engine
    assert torch.equal(again.sample(64, seed=2), fp16)


@pytest.mark.slow
def test_no_command_replaces_a_file_without_being_asked(tmp_path, digits_npz, capsys):
    """`export`, `quantize` and `sample --out x.png` once replaced an existing file silently; each
    refuses now, says which file and how to go on, and replaces it with --overwrite."""
    from hetgan.cli import main

    run = str(artifact(tmp_path, digits_npz, "dcgan", "npz", 1, 32))
    commands = {
        "g.onnx": ["export", "--artifact", run, "--format", "onnx", "--out"],
        "g.xml": ["export", "--artifact", run, "--format", "openvino", "--out"],
        "g8.onnx": ["quantize", "--artifact", run, "--quality-n", "0", "--calibration-n", "16", "--out"],
        "grid.png": ["sample", "--artifact", run, "--n", "4", "--out"],
        "walk.gif": ["sample", "--artifact", run, "--interpolate", "0", "1", "--frames", "3", "--out"],
    }
    for name, argv in commands.items():
        out = tmp_path / name
        assert main([*argv, str(out)]) == 0
        before = out.read_bytes()
        assert main([*argv, str(out)]) == 2
        assert f"{out} exists already; pass --overwrite to replace it" in capsys.readouterr().err
        assert out.read_bytes() == before
        assert main([*argv, str(out), "--overwrite"]) == 0
    (tmp_path / "g.xml").unlink()  # its .bin left behind is still an export's: refused
    assert main([*commands["g.xml"], str(tmp_path / "g.xml")]) == 2
    assert "g.bin exists already" in capsys.readouterr().err


FREE_THEN_SIGINT = """
import gc, os, signal, sys, time
from hetgan.deploy.load import load_generator
a, b = load_generator(sys.argv[1]), load_generator(sys.argv[1], streams=2)
del a; gc.collect()  # freed in the order they were made
del b; gc.collect()
signal.signal(signal.SIGINT, lambda signum, frame: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGINT)
time.sleep(0.2)
print("went on", flush=True)
"""


@pytest.mark.slow
def test_a_sigint_after_openvino_models_were_freed_reaches_the_handler(small, tmp_path):
    """Two OpenVINO generators share the process's one Core (hetgan.deploy.openvino_core). With a
    Core each, freeing them in the order they were made left the main thread on an alternate
    signal stack whose memory was gone: the next SIGINT killed the process with SIGSEGV. In a child
    process, so that a crash fails this test rather than the test worker."""
    from hetgan.deploy import openvino_core

    E.export(small[0], "openvino", tmp_path / "g.xml")
    assert OpenVINOGenerator(tmp_path / "g.xml", "g.xml").core is openvino_core("a test")
    done = subprocess.run([sys.executable, "-c", FREE_THEN_SIGINT, str(tmp_path / "g.xml")], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.split() == ["handled", "went", "on"], (done.returncode, done.stderr)
