import copy
import os

import pytest
import torch

from hetgan.accel import restored_backend_flags
from hetgan.benchmarking.training import bench, flops_per_image, textbook_flops_per_image
from hetgan.benchmarking.tune import Candidate, Trial, candidates_for, format_tune, time_candidates, tolerance, tune
from hetgan.config import AccelConfig, DataConfig, ModelConfig, TrainConfig, apply_overrides
from hetgan.errors import ConfigError, TuneError
from hetgan.models import build_models
from hetgan.presets import get_preset
from hetgan.training.trainer import Trainer
from tests.conftest import GPU, benchmark_module, run_benchmark, tiny_config

KNOBS = [
    {"precision": "bf16"},
    {"precision": "fp16"},
    {"channels_last": True},
    {"optimizer_impl": "foreach"},
    {"optimizer_impl": "fused"},
    {"threads": 1},
    {"tf32": True, "cudnn_benchmark": True},
]


@pytest.mark.parametrize("knobs", KNOBS, ids=lambda k: ",".join(f"{a}={b}" for a, b in k.items()))
def test_each_knob_runs_and_stays_finite(tiny, knobs):
    for name, value in knobs.items():
        setattr(tiny.accel, name, value)
    t = Trainer(tiny)
    for _ in range(4):
        result = t.step()
        assert not result.skipped, result.losses
    assert all(torch.isfinite(p).all() for p in t.G_ema.parameters())


@pytest.mark.parametrize(
    "loss",
    [{"name": "bce"}, {"name": "hinge", "r1_gamma": 1.0, "pack": 2}, {"name": "wgan-gp"}],
    ids=["bce", "hinge-r1-pack2", "wgan-gp"],
)
def test_a_joint_d_batch_trains_as_the_separate_one_does(digits_npz, loss):
    """For a D without layers that couple a forward's samples, one forward over real and fake
    computes what two do, up to float rounding: the same losses step for step, with R1's gradient
    through the joint forward and PacGAN packs that never mix real and fake."""
    trainers = {}
    for layout in ("separate", "joint"):
        cfg = tiny_config(f"npz:{digits_npz}", arch="mlp")
        for name, value in loss.items():
            setattr(cfg.loss, name, value)
        cfg.accel.batch_layout = layout
        trainers[layout] = Trainer(cfg)
    assert trainers["joint"].loss.joint and not trainers["separate"].loss.joint
    for _ in range(5):
        separate, joint = (trainers[layout].step().floats() for layout in ("separate", "joint"))
        assert joint.keys() == separate.keys()
        assert all(joint[k] == pytest.approx(separate[k], rel=1e-4, abs=1e-6) for k in separate), (separate, joint)
    for a, b in zip(trainers["separate"].G_ema.parameters(), trainers["joint"].G_ema.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_joint_d_batch_with_augmentation_runs_and_stays_finite(digits_npz):
    cfg = tiny_config(f"npz:{digits_npz}", arch="mlp")
    cfg.loss.augment, cfg.accel.batch_layout = "translation,cutout", "joint"
    t = Trainer(cfg)
    for _ in range(4):
        assert not t.step().skipped
    assert all(torch.isfinite(p).all() for p in t.G_ema.parameters())


@pytest.mark.slow
def test_batch_layout_benchmark_times_both_layouts():
    """benchmarks/batch_layout.py runs and reports the joint layout against the separate one."""
    out = run_benchmark("batch_layout", "--presets", "mlp_ring8", "--rounds", "2", "--seconds", "0.2")
    assert "both sides: accel.optimizer_impl=fused" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("mlp_ring8"))
    assert row[1] == "50" and float(row[2]) > 0 and float(row[3]) > 0 and row[4].endswith("x")
    assert float(row[6]) > 0 and float(row[7]) > 0 and row[8].endswith("x")  # D's phase alone, ms per step


@pytest.mark.parametrize(("arch", "layer"), [("dcgan", "BatchNorm2d"), ("resnet", "spectral norm")])
def test_a_joint_d_batch_is_refused_where_d_couples_a_forwards_samples(digits_npz, arch, layer):
    cfg = tiny_config(f"npz:{digits_npz}", arch=arch)
    cfg.accel.batch_layout = "joint"
    with pytest.raises(ConfigError, match=rf"batch_layout=joint .* \({layer}: .*keep accel.batch_layout=separate"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match=r"accel.batch_layout must be separate or joint \(got 'both'\)"):
        apply_overrides(cfg, ["accel.batch_layout=both"]).validate()


def test_tf32_off_switches_off_torchs_default_tf32_convolutions(tiny):
    """torch lets cuDNN convolutions use TF32 unless told otherwise; `tf32: false` must turn that
    off, or an "fp32" run and tune's fp32 reference would convolve in TF32 on an NVIDIA GPU."""
    with restored_backend_flags():
        torch.backends.cudnn.allow_tf32 = True  # torch's default
        torch.backends.cudnn.benchmark = True
        Trainer(tiny)
        assert not torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.benchmark
        tiny.accel.tf32 = tiny.accel.cudnn_benchmark = True
        Trainer(tiny)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.benchmark


def test_fp16_with_gradient_penalty_keeps_d_in_fp32(tiny):
    tiny.accel.precision, tiny.loss.r1_gamma = "fp16", 1.0
    t = Trainer(tiny)
    assert t.g_precision == "fp16" and t.d_precision == "fp32" and t.scaler_G and not t.scaler_D
    assert not t.step().skipped


def test_fp16_scaler_state_is_checkpointed(tiny):
    tiny.accel.precision = "fp16"
    a = Trainer(tiny)
    a.step()
    a.scaler_G.update(new_scale=1024.0)
    tensors, meta = a.state()
    b = Trainer(tiny)
    b.load_state(tensors, meta)
    assert b.scaler_G.get_scale() == 1024.0


def test_fp16_loss_scale_sits_with_the_parameters_never_across_host_and_accelerator():
    """GradScaler copies its scale to the gradients' devices and their overflow flags back without
    waiting, so the scale sits on the network's own device, and a network with parameters on the
    CPU and an accelerator is refused (the meta device stands in for an accelerator here)."""
    from hetgan.accel import loss_scale_device

    on_cpu, on_meta = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2, device="meta")
    assert loss_scale_device(on_cpu, "G") == torch.device("cpu")
    assert loss_scale_device(torch.nn.Sequential(on_meta, torch.nn.Linear(2, 2, device="meta")), "D").type == "meta"
    with pytest.raises(ConfigError, match=r"cannot scale the loss of G, whose stages are on cpu, meta.*bf16"):
        loss_scale_device(torch.nn.Sequential(on_cpu, on_meta), "G")


@pytest.mark.slow
def test_compile_runs_finite_and_keeps_d_eager_under_penalty(digits_npz):
    cfg = tiny_config("ring8", arch="mlp")
    cfg.accel.compile = True
    t = Trainer(cfg)
    for _ in range(3):
        assert not t.step().skipped
    assert t.D_fwd is not t.D  # compiled
    cfg.loss.name = "wgan-gp"
    t = Trainer(cfg)
    assert t.D_fwd is t.D and t.G_fwd is not t.G
    assert not t.step().skipped


@pytest.mark.slow
def test_compile_trains_resnet(digits_npz):
    """Its D is spectrally normalised and judges the real and the fake batch before one backward,
    which torch's spectral norm does not survive under compile (tests/test_models.py)."""
    cfg = tiny_config(f"npz:{digits_npz}", arch="resnet")
    cfg.accel.compile = True
    t = Trainer(cfg)
    for _ in range(3):
        assert not t.step().skipped
    assert t.D_fwd is not t.D and t.G_fwd is not t.G


class FakeTrial:
    """A candidate whose outputs and per-window speeds the test controls."""

    def __init__(self, outputs, speeds):
        self.outputs, self.speeds = outputs, list(speeds)
        self.windows_left_when_closed = None

    def close(self):
        self.windows_left_when_closed = len(self.speeds)

    def img_per_s(self, seconds):
        return self.speeds.pop(0)


def fake_prepare(speeds, outputs):
    """Keyed by the candidate's precision and threads; `speeds` lists one value per round."""

    def prepare(cfg):
        key = f"precision={cfg.accel.precision},threads={cfg.accel.threads}"
        return FakeTrial(outputs[key], speeds[key])

    return prepare


def test_tune_picks_fastest_sound_candidate(tiny):
    ref = (torch.ones(4, 2), torch.ones(4))
    cands = [
        Candidate("base"),
        Candidate("one thread", ["accel.threads=1"]),
        Candidate("bf16", ["accel.precision=bf16"]),
        Candidate("fp16 broken", ["accel.precision=fp16"]),
    ]
    speeds = {
        "precision=fp32,threads=0": [100.0],
        "precision=fp32,threads=1": [150.0],
        "precision=bf16,threads=0": [400.0],
        "precision=fp16,threads=0": [900.0],
    }
    outputs = {
        "precision=fp32,threads=0": ref,
        "precision=fp32,threads=1": ref,
        "precision=bf16,threads=0": (ref[0] * 1.2, ref[1]),  # 20 % off: beyond bf16's 5 %
        "precision=fp16,threads=0": (ref[0] * float("nan"), ref[1]),
    }
    best, table = time_candidates(tiny, cands, rounds=1, prepare=fake_prepare(speeds, outputs))
    assert best.name == "one thread"
    assert "off the fp32 reference" in table[2].rejected and table[3].rejected == "non-finite outputs"
    outputs["precision=bf16,threads=0"] = (ref[0] * 1.01, ref[1])  # within tolerance now
    best, _ = time_candidates(tiny, cands, rounds=1, prepare=fake_prepare(speeds, outputs))
    assert best.name == "bf16"


def test_tune_takes_each_candidates_median_over_rounds(tiny):
    # One slow spell hits "base" in round 2 and one fast spell hits "one thread" in round 1:
    # a single window would pick "one thread"; the medians pick "base".
    ref = (torch.ones(4, 2), torch.ones(4))
    speeds = {"precision=fp32,threads=0": [200.0, 50.0, 210.0], "precision=fp32,threads=1": [500.0, 150.0, 160.0]}
    outputs = {"precision=fp32,threads=0": ref, "precision=fp32,threads=1": ref}
    cands = [Candidate("base"), Candidate("one thread", ["accel.threads=1"])]
    best, table = time_candidates(tiny, cands, rounds=3, prepare=fake_prepare(speeds, outputs))
    assert best.name == "base"
    assert [c.img_per_s for c in table] == [200.0, 160.0]


def test_tune_stops_timing_what_cannot_be_chosen(tiny):
    """After the first round the unsound candidates and those under half the fastest are timed no
    more; the reference and the close ones get every round."""
    ref = (torch.ones(4, 2), torch.ones(4))
    speeds = {
        "precision=fp32,threads=0": [100.0, 100.0, 100.0],  # the reference: always kept
        "precision=fp32,threads=1": [160.0, 170.0, 150.0],  # over half of 300: kept
        "precision=fp32,threads=2": [140.0, 999.0, 999.0],  # under half of 300: dropped
        "precision=bf16,threads=0": [300.0, 300.0, 300.0],
        "precision=fp16,threads=0": [900.0, 900.0, 900.0],  # fastest, but unsound: dropped
    }
    outputs = {k: ref for k in speeds} | {"precision=fp16,threads=0": (ref[0] * 2, ref[1])}
    trials = []

    def prepare(cfg):
        trials.append(fake_prepare(speeds, outputs)(cfg))
        return trials[-1]

    cands = [Candidate("base"), Candidate("t1", ["accel.threads=1"]), Candidate("t2", ["accel.threads=2"])]
    cands += [Candidate("bf16", ["accel.precision=bf16"]), Candidate("fp16", ["accel.precision=fp16"])]
    best, table = time_candidates(tiny, cands, rounds=3, prepare=prepare)
    assert best.name == "bf16" and [t.windows_left_when_closed for t in trials] == [0, 0, 2, 0, 2]
    assert [c.timed_once for c in table] == [False, False, True, False, True]
    assert [c.img_per_s for c in table] == [100.0, 160.0, 140.0, 300.0, 900.0]
    rows = format_tune(best, table).splitlines()
    assert "timed once: under 50% of the fastest" in rows[3]
    assert [row.split()[2] for row in rows[1:6]] == ["1.00x", "1.60x", "1.40x", "3.00x", "9.00x"]  # vs base


@pytest.mark.parametrize(("compiled_speed", "chosen"), [(204.0, "layout"), (240.0, "layout + compile")])
def test_tune_prefers_fewer_knobs_within_the_tie_margin(compiled_speed, chosen):
    from hetgan.benchmarking.tune import TIE_MARGIN, format_tune, pick

    assert 204.0 < 200.0 / (1 - TIE_MARGIN) < 240.0  # the first case is a tie, the second is not
    sound = [
        Candidate("base", [], img_per_s=150.0),
        Candidate("layout", ["accel.channels_last=true"], img_per_s=200.0),
        Candidate("layout + compile", ["accel.channels_last=true", "accel.compile=true"], img_per_s=compiled_speed),
    ]
    best = pick(sound)
    assert best.name == chosen
    assert ("tie margin" in format_tune(best, sound)) == (chosen == "layout")


def test_tune_rejects_a_candidate_that_fails_while_timed(tiny):
    class Crashes(FakeTrial):
        def img_per_s(self, seconds):
            raise RuntimeError("CUDA out of memory\nmore detail")

    ref = (torch.ones(1), torch.ones(1))

    def prepare(cfg):
        return Crashes(ref, []) if cfg.accel.threads == 1 else FakeTrial(ref, [10.0, 10.0])

    best, table = time_candidates(
        tiny, [Candidate("base"), Candidate("one", ["accel.threads=1"])], rounds=2, prepare=prepare
    )
    assert best.name == "base" and table[1].rejected == "failed: RuntimeError: CUDA out of memory"
    assert table[1].img_per_s is None


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


def test_page_fault_benchmark_times_both_allocator_settings():
    """benchmarks/page_faults.py, tiny: a child process per setting trains and reports its
    windows, and the two settings' step times give a ratio."""
    args = ["--pairs", "1", "--rounds", "2", "--seconds", "0.3", "--batch", "8", "--width", "8"]
    out = run_benchmark("page_faults", *args, timeout=180)
    rows = {line[:20].strip(): line[20:].split() for line in out.splitlines()[2:4]}
    assert set(rows) == {"glibc defaults", "keep freed memory"}
    assert all(float(ms) > 0 and float(img_s) > 0 for ms, img_s, *_ in rows.values())
    assert "(mean of 2 windows each)" in out


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
def test_conv_primitives_benchmark_sees_every_forward_convolution():
    """benchmarks/conv_primitives.py, tiny: the forward convolutions oneDNN reports for one step
    add up to G's forward once and D's three times (real, fake, fake again in the G step), as
    torch's FLOP counter counts them; all three propagations are there."""
    from torch.utils.flop_counter import FlopCounterMode

    conv_primitives = benchmark_module("conv_primitives")
    times = conv_primitives.measure(["--batch", "4", "--width", "8", "--steps", "2"], steps=2)
    assert {p for kind, _, p, _ in times if kind == "convolution"} == {
        "forward_training",
        "backward_data",
        "backward_weights",
    }
    forward = sum(
        calls * conv_primitives.gflop(kind, shape) * 1e9
        for (kind, _, prop, shape), (calls, _) in times.items()
        if prop == "forward_training" and kind.endswith("convolution")
    )
    cfg = apply_overrides(get_preset("dcgan_textbook"), ["model.width=8", "train.batch_size=4"])
    G, D = build_models(cfg)
    with FlopCounterMode(display=False) as g_count:
        fake = G(torch.randn(4, cfg.model.z_dim))
    with FlopCounterMode(display=False) as d_count:
        D(fake)
    assert forward == pytest.approx(g_count.get_total_flops() + 3 * d_count.get_total_flops())


@pytest.mark.parametrize("loss", ["r1", "wgan-gp"])
def test_flop_count_includes_gradient_penalties(loss):
    cfg = tiny_config("ring8", arch="mlp")
    plain = flops_per_image(cfg)
    if loss == "r1":
        cfg.loss.r1_gamma = 0.1
    else:
        cfg.loss.name = "wgan-gp"
    assert flops_per_image(cfg) > plain  # the penalty's double backward is counted, not a crash


def test_tune_reference_outputs_do_not_hang_on_the_augmentation_draws(tiny):
    """With DiffAugment on, D's outputs on the fixed batch must not depend on the trainer's random
    stream, which differs between placements (a CPU and a CUDA generator draw differently): a sound
    placement would otherwise be judged off the reference and rejected."""
    from hetgan.benchmarking.tune import reference_outputs

    tiny.loss.augment = "translation,cutout"
    t = Trainer(tiny)
    first = reference_outputs(tiny, t)
    torch.rand(5, generator=t.rng)  # the stream moves on, as another device's would differ
    for a, b in zip(first, reference_outputs(tiny, t), strict=True):
        assert torch.equal(a, b)


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
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype: measured[dtype])
    cpu = torch.device("cpu")
    assert bench.device_peak(cpu, "bf16") == (100.0, "fp32")
    assert bench.device_peak(cpu, "fp16") == (300.0, "fp16")
    assert bench.device_peak(cpu, "fp32") == (100.0, "fp32")


def test_share_of_peak_counts_every_device_g_and_d_use(monkeypatch):
    from hetgan.benchmarking import training as bench

    measured = {"cpu": (130e9, "fp32"), "cuda:0": (900e12, "bf16")}
    monkeypatch.setattr(bench, "device_peak", lambda device, precision: measured[str(device)])
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


@pytest.mark.slow
def test_tune_cli_on_cpu_picks_a_sound_candidate(tmp_path, capsys):
    from hetgan.cli import main

    out = tmp_path / "t.json"
    assert main(["tune", "--preset", "mlp_ring8", "--seconds", "0.5", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BEST" in printed and "chosen:" in printed
    import json

    record = json.loads(out.read_text())
    assert record["machine"]["cpu_count"] == os.cpu_count() and record["config"]["preset"] == "mlp_ring8"
    table = record["table"]
    assert table[0]["name"].startswith("plain") and table[0]["max_rel_error"] == 0.0
    if (os.cpu_count() or 1) > 1:  # threads=1 is tried wherever it differs from the plain config
        assert any(row["name"].startswith("threads=") for row in table)


def test_autotune_returns_the_config_with_the_choice_applied(tiny):
    """The Python API behind `train --placement auto`: the input config is left as it was."""
    outputs = {key: (torch.ones(2), torch.ones(2)) for key in ("precision=fp32,threads=0", "precision=fp32,threads=1")}
    speeds = {"precision=fp32,threads=0": [100.0, 100.0], "precision=fp32,threads=1": [150.0, 150.0]}
    cands = [Candidate("base"), Candidate("one thread", ["accel.threads=1"])]
    result = tune(tiny, seconds=0.1, rounds=2, candidates=cands, prepare=fake_prepare(speeds, outputs))
    assert result.chosen.name == "one thread" and result.config.accel.threads == 1 and tiny.accel.threads == 0
    assert "chosen: one thread: --set accel.threads=1" in result.summary()
    with pytest.raises(ConfigError, match="--rounds must be at least 1"):
        tune(tiny, rounds=0, candidates=cands, prepare=fake_prepare(speeds, outputs))


def test_tune_saves_the_tuned_config_for_train(tmp_path, capsys, monkeypatch, digits_npz):
    """`hetgan tune --save-config FILE` writes the input config with the choice applied, which
    `--config FILE` (train, bench, tune) reads back as it was."""
    from hetgan.benchmarking import tune as tune_module
    from hetgan.cli import main
    from hetgan.config import load_yaml, to_dict

    outputs = {key: (torch.ones(2), torch.ones(2)) for key in ("precision=fp32,threads=0", "precision=fp32,threads=1")}
    speeds = {"precision=fp32,threads=0": [100.0], "precision=fp32,threads=1": [150.0]}
    cands = [Candidate("base"), Candidate("one thread", ["accel.threads=1"])]
    seen = []

    def controlled(cfg, seconds, rounds):
        seen.append(cfg)
        return tune(cfg, seconds, rounds, candidates=cands, prepare=fake_prepare(speeds, outputs))

    monkeypatch.setattr(tune_module, "tune", controlled)
    path = tmp_path / "configs" / "tuned.yaml"  # its folder is made
    argv = ["tune", "--preset", "mlp_ring8", "--data", f"npz:{digits_npz}", "--set", "train.batch_size=32"]
    assert main([*argv, "--rounds", "1", "--save-config", str(path)]) == 0
    assert f"train with: hetgan train --config {path}" in capsys.readouterr().out
    saved = load_yaml(path)
    assert saved.accel.threads == 1 and seen[0].accel.threads == 0
    expected = apply_overrides(copy.deepcopy(seen[0]), ["accel.threads=1"])
    assert to_dict(saved) == to_dict(expected)  # everything else as given: preset, data, batch size
    monkeypatch.chdir(digits_npz.parent)  # a relative data path is saved absolute, as a run's config.yaml has it
    assert (
        main(["tune", "--preset", "mlp_ring8", "--data", "npz:digits.npz", "--rounds", "1", "--save-config", str(path)])
        == 0
    )
    assert load_yaml(path).data.spec == f"npz:{digits_npz}"


def test_tune_stops_when_the_reference_candidate_fails(tiny):
    def prepare(cfg):
        if cfg.accel.threads == 0:
            raise ValueError("no such device")
        return FakeTrial((torch.ones(1), torch.ones(1)), [1.0])

    with pytest.raises(TuneError, match=r"reference candidate 'base' failed: ValueError: no such device"):
        time_candidates(tiny, [Candidate("base"), Candidate("one", ["accel.threads=1"])], rounds=1, prepare=prepare)
    tiny.accel.g_device = "tpu"  # the user's config itself is wrong: its own error, not tune's
    with pytest.raises(ConfigError, match=r"^accel.g_device: unknown device 'tpu'; use auto, cpu"):
        tune(tiny, seconds=0.1, rounds=1)


def test_tune_times_each_candidate_with_its_own_threads_and_restores_them(tiny, monkeypatch):
    from hetgan.benchmarking import tune as tune_module

    monkeypatch.setattr(tune_module, "DROP_BELOW", 0.0)  # every candidate is timed in every round,
    before = torch.get_num_threads()  # however slow threads=1 is on a busy machine
    seen = []

    class Recording(Trial):
        def img_per_s(self, seconds):
            speed = super().img_per_s(seconds)
            seen.append((self.cfg.accel.threads, torch.get_num_threads()))
            return speed

    cands = [Candidate("base"), Candidate("one", ["accel.threads=1"]), Candidate("after")]
    time_candidates(tiny, cands, seconds=0.2, rounds=2, prepare=Recording)
    assert seen == [(0, before), (1, 1), (0, before)] * 2 and torch.get_num_threads() == before


def test_tune_tries_channels_last_only_where_the_networks_convolve():
    conv = [c.name for c in candidates_for(TrainConfig(), torch.device("cpu"))]
    assert "channels_last" in conv and "channels_last + compile" in conv and "channels_last + fused Adam" in conv
    mlp = candidates_for(TrainConfig(data=DataConfig(spec="ring8"), model=ModelConfig(arch="mlp")), torch.device("cpu"))
    names = [c.name for c in mlp if not c.name.startswith("threads=")]
    joint = ["joint D batch", "fused Adam + joint D batch", "bf16 + joint D batch"]
    assert names == ["plain (fp32, eager)", "fused Adam", "compile", "bf16", *joint]
    assert not any("accel.channels_last=true" in c.overrides for c in mlp)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_tune_tries_the_joint_d_batch_only_where_d_allows_it(device):
    """An MLP's D judges real and fake in one forward as well as in two; DCGAN's BatchNorm and
    the ResNet's spectral norm would compute something else, so tune never offers it there."""
    mlp = TrainConfig(data=DataConfig(spec="ring8"), model=ModelConfig(arch="mlp"))
    cands = candidates_for(mlp, torch.device(device))
    joint = {c.name: apply_overrides(copy.deepcopy(mlp), c.overrides).accel for c in cands if "joint" in c.name}
    assert joint and all(accel.batch_layout == "joint" for accel in joint.values())
    if device == "cuda":
        graphed = joint["bf16 + CUDA graphs + joint D batch"]
        assert graphed.cuda_graphs and graphed.optimizer_impl == "fused" and graphed.precision == "bf16"
    for preset in ("dcgan_mnist", "resnet_cifar10"):
        cfg = get_preset(preset)
        assert not any("batch_layout" in o for c in candidates_for(cfg, torch.device(device)) for o in c.overrides)


def test_tune_candidates_start_from_the_plain_config_whatever_the_preset_sets():
    """dcgan_mnist turns channels_last on: the reference must still be plain fp32 (tune once showed
    a 'contiguous' baseline that was channels_last, and timed the same setting twice)."""
    cfg = get_preset("dcgan_mnist")
    cfg.accel.precision = "bf16"  # a user's own knob, on top of the preset's
    cands = candidates_for(cfg, torch.device("cpu"))
    applied = {c.name: apply_overrides(copy.deepcopy(cfg), c.overrides).accel for c in cands}
    plain, configured = cands[0], cands[1]
    assert plain.name.startswith("plain") and applied[plain.name].precision == "fp32"
    assert not applied[plain.name].channels_last and configured.overrides == []
    assert configured.name == "as configured (precision=bf16, channels_last=true)"
    assert len({frozenset(c.overrides) for c in cands}) == len(cands)  # nothing timed twice
    compiled = applied["channels_last + compile"]
    assert compiled.compile and compiled.channels_last and compiled.precision == "fp32"


def test_tune_tries_placements_on_an_accelerator():
    names = [c.name for c in candidates_for(TrainConfig(), torch.device("cuda"))]
    assert "G on cuda, D on cpu" in names and "D on cuda, G on cpu" in names
    assert not any(" on " in c.name for c in candidates_for(TrainConfig(), torch.device("cpu")))
    fixed = TrainConfig()
    fixed.accel.d_device = "cpu"  # the user placed D: tune keeps that and tunes the knobs only
    names = [c.name for c in candidates_for(fixed, torch.device("cuda"))]
    assert "channels_last + bf16" in names and not any(" on " in name for name in names)


def test_tune_offers_the_captured_step_only_as_it_can_run_on_a_gpu():
    """Every CUDA-graph candidate sets what the captured step needs (fused Adam, not fp16), and no
    compiled candidate is channels_last (torch 2.11's compiled convolution backward fails on it on
    a GPU), even for a preset that turns channels_last on."""
    cfg = get_preset("dcgan_mnist")
    cands = candidates_for(cfg, torch.device("cuda"))
    applied = {c.name: apply_overrides(copy.deepcopy(cfg), c.overrides).accel for c in cands}
    graphed = {name for name, accel in applied.items() if accel.cuda_graphs}
    assert graphed == {
        "bf16 + CUDA graphs",
        "channels_last + bf16 + CUDA graphs",
        "bf16 + compile + CUDA graphs",
        "channels_last + bf16 + cudnn.benchmark + CUDA graphs",
    }
    assert all(applied[name].optimizer_impl == "fused" and applied[name].precision == "bf16" for name in graphed)
    assert all(not accel.channels_last for accel in applied.values() if accel.compile)
    assert not any(
        accel.cuda_graphs
        for c in candidates_for(cfg, torch.device("cpu"))
        for accel in [apply_overrides(copy.deepcopy(cfg), c.overrides).accel]
    )


def test_tf32_candidates_are_judged_at_tf32_precision():
    """TF32 keeps 10 mantissa bits: an H100 put tune's TF32 candidate 1.4e-3 off the fp32
    reference, over the fp32 limit, so it was rejected for the rounding it is meant to have."""
    assert tolerance(AccelConfig()) < 1.4e-3 < tolerance(AccelConfig(tf32=True))
    assert tolerance(AccelConfig(precision="bf16", tf32=True)) == tolerance(AccelConfig(precision="bf16"))


@GPU
@pytest.mark.parametrize(
    "knobs",
    [
        {"precision": "bf16", "channels_last": True, "optimizer_impl": "fused"},
        {"precision": "fp16"},
        {"tf32": True, "cudnn_benchmark": True},
        {"precision": "bf16", "cuda_graphs": True, "optimizer_impl": "fused"},
    ],
)
def test_gpu_knobs_run_and_stay_finite(tiny, knobs):
    tiny.accel.device = "cuda"
    for name, value in knobs.items():
        setattr(tiny.accel, name, value)
    t = Trainer(tiny)
    for _ in range(5):
        assert not t.step().skipped
    assert all(torch.isfinite(p).all() for p in t.G_ema.parameters())


@GPU
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_gpu_fused_step_never_waits_for_the_gpu(tiny, precision):
    """CUDA's sync debug mode raises on anything that makes the host wait for the GPU (a host
    read of a tensor, a copy from pageable memory): a step with fused Adam does none of them,
    across an epoch boundary of the resident sampler too."""
    tiny.accel.device, tiny.accel.optimizer_impl, tiny.accel.precision = "cuda", "fused", precision
    t = Trainer(tiny)
    t.step()  # creates the optimisers' state
    steps = len(t.data.images) // tiny.train.batch_size + 2
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(steps):
            t.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    t.count_skipped()
    assert t.sampler.epoch >= 1 and t.nonfinite_total == 0
    assert all(torch.isfinite(p).all() for p in t.G_ema.parameters())


@GPU
@pytest.mark.parametrize("g_placement", [{"g_device": "cpu"}, {"g_device": "cuda", "g_stages": "0-2@cuda,3-@cpu"}])
def test_gpu_fused_skip_with_d_on_the_gpu_and_g_partly_on_the_cpu(tiny, g_placement):
    """G's phase loss is on the GPU (D's output) but some of G's parameters, so some of its
    optimiser and EMA, are on the CPU: its skip flag is read on the host; D's stays on the GPU.
    Non-finite steps are still skipped."""
    tiny.accel.d_device, tiny.accel.optimizer_impl = "cuda", "fused"
    for name, value in g_placement.items():
        setattr(tiny.accel, name, value)
    t = Trainer(tiny)
    result = t.step()
    assert isinstance(result.nonfinite["G"], bool) and torch.is_tensor(result.nonfinite["D"])
    with torch.no_grad():
        next(t.D.parameters()).fill_(float("nan"))
    g_before = [p.detach().clone() for p in (*t.G.parameters(), *t.G_ema.parameters())]
    assert t.step().skipped == ["D", "G"]
    assert all(torch.equal(a, b) for a, b in zip(g_before, (*t.G.parameters(), *t.G_ema.parameters()), strict=True))


@GPU
@pytest.mark.parametrize("impl", ["default", "fused"])
def test_gpu_fp16_with_g_on_the_gpu_and_d_on_the_cpu(tiny, impl):
    """G's loss is D's output, on the CPU; its loss scale and overflow flags stay on the GPU with
    G's gradients, so no scaler reads a flag the GPU has not yet written. Non-finite steps are
    skipped and leave G untouched."""
    tiny.accel.g_device, tiny.accel.d_device = "cuda", "cpu"
    tiny.accel.precision, tiny.accel.optimizer_impl = "fp16", impl
    t = Trainer(tiny)
    for _ in range(3):
        assert not t.step().skipped
    assert t.scaler_G._scale.device.type == "cuda" and t.scaler_D._scale.device.type == "cpu"
    with torch.no_grad():
        next(t.D.parameters()).fill_(float("nan"))
    g_before = [p.detach().clone() for p in (*t.G.parameters(), *t.G_ema.parameters())]
    scale = t.scaler_G.get_scale()
    assert t.step().skipped == ["D", "G"]
    # Skipped on the device, the step goes through the scaler, whose update sees the overflow.
    assert t.scaler_G.get_scale() == (scale / 2 if impl == "fused" else scale)
    assert all(torch.equal(a, b) for a, b in zip(g_before, (*t.G.parameters(), *t.G_ema.parameters()), strict=True))


@GPU
def test_gpu_fp16_refuses_a_network_split_over_the_gpu_and_the_cpu(tiny):
    tiny.accel.device, tiny.accel.precision, tiny.accel.g_stages = "cuda", "fp16", "0-2@cuda,3-@cpu"
    with pytest.raises(ConfigError, match="cannot scale the loss of G, whose stages are on cuda:0, cpu"):
        Trainer(tiny)


@GPU
def test_gpu_prefetch_loader_matches_resident(tiny):
    tiny.accel.device = "cuda"
    resident = Trainer(tiny)
    tiny.data.loader = "prefetch"
    prefetched = Trainer(tiny)
    assert torch.equal(resident.sampler.next(8), prefetched.sampler.next(8))
    prefetched.sampler.close()


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


def test_the_python_api_checks_a_config_as_the_cli_does(tiny):
    """A config built in Python gets the same range checks as one from --set: a clear error, not
    a KeyError from deep in the trainer."""
    from hetgan import bench

    tiny.accel.precision = "fp8"
    for call in (lambda: Trainer(tiny), lambda: bench(tiny, seconds=1), lambda: tune(tiny, seconds=1)):
        with pytest.raises(ConfigError, match=r"accel.precision must be fp32, bf16 or fp16 \(got 'fp8'\)"):
            call()


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


def test_tune_reads_the_data_once_for_all_candidates(tiny, monkeypatch):
    """Each candidate's trainer gets the dataset tune read, instead of reading (for a folder,
    decoding) it again, and their samplers share one copy of the images per device."""
    from hetgan.benchmarking import tune as tune_module
    from hetgan.training import trainer as trainer_module

    reads = []
    real_load = tune_module.load_data
    monkeypatch.setattr(tune_module, "load_data", lambda cfg: reads.append(cfg.spec) or real_load(cfg))
    monkeypatch.setattr(trainer_module, "load_data", lambda cfg: pytest.fail("a candidate read the data again"))
    cands = [Candidate("base"), Candidate("layout", ["accel.channels_last=true"])]
    best, table = time_candidates(tiny, cands, seconds=0.1, rounds=1)
    assert reads == [tiny.data.spec] and all(c.img_per_s for c in table)
