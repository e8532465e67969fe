import pytest
import torch

from hetgan.accel import restored_backend_flags
from hetgan.benchmarking.tune import tolerance, tune
from hetgan.config import AccelConfig, apply_overrides
from hetgan.errors import ConfigError
from hetgan.training.trainer import Trainer
from tests.conftest import GPU, tiny_config

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


def test_the_python_api_checks_a_config_as_the_cli_does(tiny):
    """A config built in Python gets the same range checks as one from --set: a clear error, not
    a KeyError from deep in the trainer."""
    from hetgan import bench

    tiny.accel.precision = "fp8"
    for call in (lambda: Trainer(tiny), lambda: bench(tiny, seconds=1), lambda: tune(tiny, seconds=1)):
        with pytest.raises(ConfigError, match=r"accel.precision must be fp32, bf16 or fp16 \(got 'fp8'\)"):
            call()
