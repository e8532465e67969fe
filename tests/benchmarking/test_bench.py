import pytest
import torch

from hetgan.benchmarking.training import bench, flops_per_image, textbook_flops_per_image
from hetgan.models import build_models
from hetgan.training.trainer import Trainer
from tests.conftest import GPU, tiny_config


def test_flop_count_matches_hand_count():
    cfg = tiny_config("ring8", arch="mlp")
    cfg.model.z_dim, cfg.model.width = 2, 4
    # G: 2-4-8-16-2, D: 2-8-4-1 (Linear layers). Matmul FLOPs per image, 2*in*out per product:
    g_fwd = 2 * (2 * 4 + 4 * 8 + 8 * 16 + 16 * 2)  # 400
    d_fwd = 2 * (2 * 8 + 8 * 4 + 4 * 1)  # 104
    d_input_grads_after_first = 2 * (8 * 4 + 4 * 1)  # 72: D's first layer input needs no grad in D step
    g_input_grads_after_first = 2 * (4 * 8 + 8 * 16 + 16 * 2)  # 384: z needs no grad
    d_step = 2 * (d_fwd + d_fwd + d_input_grads_after_first)  # real and fake: forward, weight + input grads
    g_step = d_fwd + d_fwd + g_fwd + g_input_grads_after_first  # D fwd, D input grads, G weight + input grads
    assert flops_per_image(cfg) == g_fwd + d_step + g_step == 1952


def test_textbook_step_costs_more_flops_than_hetgans(tiny):
    # Same model and batch; the textbook G step also computes D's weight gradients.
    assert textbook_flops_per_image(tiny, Trainer(tiny)) > flops_per_image(tiny)


@pytest.mark.parametrize("loss", ["r1", "wgan-gp"])
def test_flop_count_includes_gradient_penalties(loss):
    cfg = tiny_config("ring8", arch="mlp")
    plain = flops_per_image(cfg)
    if loss == "r1":
        cfg.loss.r1_gamma = 0.1
    else:
        cfg.loss.name = "wgan-gp"
    assert flops_per_image(cfg) > plain  # the penalty's double backward is counted, not a crash


def test_machine_info_lists_the_gpus_whatever_the_main_device():
    """With --device cpu --g-device cuda the main device is the CPU, but the record of what a run
    or benchmark ran on still names the GPUs (none here, without one)."""
    from hetgan.training.rundir import machine_info

    info = machine_info(torch.device("cpu"))
    assert info["device"] == "cpu" and "gpu" not in info
    assert info.get("gpus", []) == [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    assert ("cuda" in info) == torch.cuda.is_available()


def test_bench_timers_wait_for_every_kind_of_accelerator(monkeypatch):
    """Timing an MPS or XPU run without waiting for the device measures only the launches: the
    timers wait on every accelerator, not on CUDA alone."""
    from hetgan.benchmarking import training as bench

    waited = []
    monkeypatch.setattr(torch.accelerator, "synchronize", waited.append)
    devices = [torch.device("cpu"), torch.device("mps"), torch.device("xpu", 0), torch.device("cuda", 1)]
    bench.synchronize(devices)
    assert waited == devices[1:]


def test_bench_reports_every_part(tiny):
    r = bench(tiny, seconds=0.6, rounds=3)
    assert r["img_per_s"] > 0 and r["textbook_img_per_s"] > 0 and r["speedup_vs_textbook"] > 0
    hetgan, textbook = r["img_per_s_rounds"], r["textbook_img_per_s_rounds"]
    assert len(hetgan) == len(textbook) == 3  # timed in turn, one window each per round
    assert r["img_per_s"] == sorted(hetgan)[1] and r["textbook_img_per_s"] == sorted(textbook)[1]
    assert r["speedup_vs_textbook"] == sorted(h / t for h, t in zip(hetgan, textbook, strict=True))[1]
    assert {"data", "g_forward", "d_forward", "d_backward", "d_optimizer", "g_backward", "ema"} <= set(
        r["phases_ms_per_step"]
    )
    assert 0 < r["share_of_peak"] < 1 and r["peak_memory_mib"]["cpu (process peak RSS)"] > 10
    assert r["matmul_peak_dtype"] == "fp32"


def test_share_of_peak_is_against_the_fastest_dtype_the_run_uses(monkeypatch):
    """A bf16 run on a CPU without bf16 units is bounded by its fp32 products, not by a bf16
    peak slower than what the run achieves (an fp16 bench here once reported 440 % of peak)."""
    from hetgan.benchmarking import training as bench

    measured = {torch.float32: 100.0, torch.bfloat16: 5.0, torch.float16: 300.0}
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype, seconds: measured[dtype])
    cpu = torch.device("cpu")
    assert bench.device_peak(cpu, "bf16") == (100.0, "fp32")
    assert bench.device_peak(cpu, "fp16") == (300.0, "fp16")
    assert bench.device_peak(cpu, "fp32") == (100.0, "fp32")


def test_share_of_peak_counts_every_device_g_and_d_use(monkeypatch):
    from hetgan.benchmarking import training as bench

    measured = {"cpu": (130e9, "fp32"), "cuda:0": (900e12, "bf16")}
    monkeypatch.setattr(bench, "device_peak", lambda device, precision, seconds: measured[str(device)])
    peaks = bench.devices_peak({torch.device("cuda:0"), torch.device("cpu")}, "bf16")
    assert peaks == {"cpu": measured["cpu"], "cuda:0": measured["cuda:0"]}
    report = {
        "preset": "p", "batch_size": 64, "device": "cuda:0", "img_per_s": 1.0, "img_per_s_rounds": [1.0],
        "flops_per_image": 1e6, "achieved_flop_per_s": 1e6, "share_of_peak": 1e6 / (900e12 + 130e9),
        "matmul_peak_flop_per_s": 900e12 + 130e9, "matmul_peak_dtype": "bf16, fp32",
        "matmul_peak_by_device": {d: flop_s for d, (flop_s, _) in peaks.items()},
        "phases_ms_per_step": {"data": 1.0}, "peak_memory_mib": {},
    }  # fmt: skip
    assert "900130.00 GFLOP/s (bf16, fp32; cpu 130.0 + cuda:0 900000.0)" in bench.format_bench(report)


@pytest.mark.slow
def test_bench_cli_writes_json(tmp_path, capsys):
    from hetgan.cli import main

    out = tmp_path / "new" / "b.json"  # its folder is made
    args = ["--preset", "mlp_ring8", "--batch", "50", "100", "--seconds", "0.3", "--d-device", "cpu"]
    assert main(["bench", *args, "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "img/s (steady state)" in text and "share of peak" in text
    import json

    results = json.loads(out.read_text())
    assert [r["batch_size"] for r in results] == [50, 100] and all(r["flops_per_image"] > 0 for r in results)
    assert all(r["accel"]["d_device"] == "cpu" and r["accel"]["g_device"] == "" for r in results)
    # a record that stands on its own: when, on what, and the whole config
    assert [r["config"]["train"]["batch_size"] for r in results] == [50, 100]
    assert all(r["machine"]["torch"] == torch.__version__ and r["date"].startswith("20") for r in results)


@GPU
def test_gpu_bench_reports_memory_and_peak(tiny):
    """The GPU's peak memory is the tiny model's steps' own: the matrix-product probe's three
    4096x4096 fp32 matrices (192 MiB) and the textbook loop's tensors are not in it."""
    tiny.accel.device, tiny.accel.precision = "cuda", "bf16"
    r = bench(tiny, seconds=0.5)
    (name,) = [k for k in r["peak_memory_mib"] if k.startswith("cuda")]
    assert 0 < r["peak_memory_mib"][name] < 64 and r["matmul_peak_flop_per_s"] > 1e12


def test_textbook_loop_is_the_pytorch_example_step():
    """One G forward per step (its output reused for the G step, as the PyTorch DCGAN example
    does), and both networks' weights move."""
    from hetgan.benchmarking.textbook import TextbookLoop

    torch.manual_seed(0)
    G, D = build_models(tiny_config("mnist5k"))
    calls = []
    G.register_forward_hook(lambda *_: calls.append(1))
    loop = TextbookLoop(G, D, torch.rand(16, 1, 32, 32) * 2 - 1, z_dim=G.z_dim, batch_size=8)
    before = [p.detach().clone() for p in (*G.parameters(), *D.parameters())]
    loop.step(torch.rand(8, 1, 32, 32) * 2 - 1)
    assert len(calls) == 1 and loop.nimg == 8
    after = list((*G.parameters(), *D.parameters()))
    n_g = len(list(G.parameters()))
    assert not torch.equal(before[0], after[0]) and not torch.equal(before[n_g], after[n_g])  # G and D moved


@pytest.mark.parametrize("command", ["tune", "bench"])
@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--rounds", "0"], "--rounds must be at least 1, got 0"), (["--seconds", "0"], "--seconds must be more than 0")],
)
def test_timing_commands_refuse_empty_windows(capsys, command, flags, message):
    from hetgan.cli import main

    assert main([command, "--preset", "mlp_ring8", *flags]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["tune", "bench"])
def test_a_bad_json_path_is_refused_before_the_timing(tmp_path, capsys, monkeypatch, command):
    """A finished benchmark is never lost to a --json path that cannot be written."""
    import hetgan
    from hetgan.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("timed before checking --json")

    monkeypatch.setattr(hetgan, "bench", must_not_run)
    monkeypatch.setattr(hetgan, "tune", must_not_run)
    (tmp_path / "afile").write_text("")
    for path, message in [(tmp_path, "that is a folder"), (tmp_path / "afile" / "x.json", "is a file")]:
        assert main([command, "--preset", "mlp_ring8", "--json", str(path)]) == 2
        assert message in capsys.readouterr().err
        if command == "tune":
            assert main([command, "--preset", "mlp_ring8", "--save-config", str(path)]) == 2
            assert message in capsys.readouterr().err
