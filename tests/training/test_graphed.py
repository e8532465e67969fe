"""The whole training step as one CUDA graph (accel.cuda_graphs): what it refuses, on any machine,
and on a GPU that its replays train as the eager step does."""

from __future__ import annotations

import json

import pytest
import torch

from hetgan.errors import ConfigError
from hetgan.models.layers import SpectralNorm
from hetgan.training.checkpoint import flatten_optimizer
from hetgan.training.graphed import WARMUP_STEPS
from hetgan.training.step import StepResult
from hetgan.training.trainer import Trainer
from tests.conftest import GPU, tiny_config

STEPS = WARMUP_STEPS + 5  # warm-up, the captured step, then replays


def test_cuda_graphs_need_cuda(tiny):
    tiny.accel.cuda_graphs, tiny.accel.optimizer_impl = True, "fused"
    with pytest.raises(ConfigError, match="needs a CUDA device, but G has parameters on cpu"):
        Trainer(tiny)


def test_learning_rates_kept_on_the_device_are_saved_as_numbers(tiny):
    """A captured step reads its learning rates from device tensors; a checkpoint's JSON holds them
    as numbers."""
    opt = Trainer(tiny).opt_G
    opt.param_groups[0]["lr"] = torch.tensor(2e-4)
    _, meta = flatten_optimizer("opt_G", opt)
    assert json.loads(json.dumps(meta))["param_groups"][0]["lr"] == pytest.approx(2e-4)


def graphed_and_eager(tiny, **accel):
    tiny.accel.device, tiny.accel.optimizer_impl = "cuda", "fused"
    for name, value in accel.items():
        setattr(tiny.accel, name, value)
    eager = Trainer(tiny)
    tiny.accel.cuda_graphs = True
    return Trainer(tiny), eager


def assert_same_training(a: Trainer, b: Trainer, atol: float) -> None:
    for x, y in zip(
        [*a.G.parameters(), *a.G_ema.parameters(), *a.D.parameters()],
        [*b.G.parameters(), *b.G_ema.parameters(), *b.D.parameters()],
        strict=True,
    ):
        torch.testing.assert_close(x, y, rtol=0, atol=atol, equal_nan=True)


@GPU
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_captured_step_trains_as_the_eager_step(tiny, precision):
    """Step for step the same losses and, in fp32, weights (G, G_ema, D) as the eager step, with a
    learning rate that decays and an EMA that ramps up: both are read from device tensors by the
    replays. In bf16 the two round differently (cuDNN may pick other algorithms under capture), so
    the losses agree to bf16's precision."""
    tiny.optim.lr_decay, tiny.optim.decay_start_kimg, tiny.optim.decay_end_kimg = "linear", 0.0, 0.1
    graphed, eager = graphed_and_eager(tiny, precision=precision)
    rel, abs_ = (1e-4, 1e-5) if precision == "fp32" else (2e-2, 2e-3)
    for _ in range(STEPS):
        got, want = graphed.step().floats(), eager.step().floats()
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=rel, abs=abs_), key
    assert graphed.graph.graph is not None  # it did capture
    if precision == "fp32":
        assert_same_training(graphed, eager, atol=1e-5)
    assert all(torch.isfinite(p).all() for p in graphed.G_ema.parameters())


@GPU
def test_gpu_captured_step_with_a_joint_d_batch_trains_as_the_eager_step(digits_npz):
    """D's real and fake batch in one forward (an MLP's D allows it) inside the captured step."""
    cfg = tiny_config(f"npz:{digits_npz}", arch="mlp")
    graphed, eager = graphed_and_eager(cfg, batch_layout="joint")
    assert graphed.loss.joint and eager.loss.joint
    for _ in range(STEPS):
        got, want = graphed.step().floats(), eager.step().floats()
        assert got.keys() == want.keys()
        assert all(got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-5) for k in want), (got, want)
    assert graphed.graph.graph is not None
    assert_same_training(graphed, eager, atol=1e-5)


@GPU
@pytest.mark.parametrize("compiled", [False, True])
def test_gpu_captured_resnet_step_trains_as_the_eager_step(digits_npz, compiled):
    """The resnet D's spectral norm writes u and v into its buffers in place under CUDA graphs
    (outside torch.compile, where compiled): each replay must advance them, as the eager step does."""
    cfg = tiny_config(f"npz:{digits_npz}", arch="resnet")
    graphed, eager = graphed_and_eager(cfg, compile=compiled)
    norms = [m for m in graphed.D.modules() if isinstance(m, SpectralNorm)]
    assert norms and all(m.in_place for m in norms)
    for _ in range(STEPS):
        got, want = graphed.step().floats(), eager.step().floats()
        assert all(got[k] == pytest.approx(want[k], rel=1e-3, abs=1e-4) for k in want), (got, want)
    assert graphed.graph.graph is not None
    assert_same_training(graphed, eager, atol=1e-4)
    for x, y in zip(graphed.D.buffers(), eager.D.buffers(), strict=True):  # u and v of each layer
        torch.testing.assert_close(x, y, rtol=0, atol=1e-4)


@GPU
def test_gpu_replays_never_wait_for_the_gpu(tiny):
    tiny.accel.device, tiny.accel.optimizer_impl, tiny.accel.cuda_graphs = "cuda", "fused", True
    t = Trainer(tiny)
    for _ in range(WARMUP_STEPS + 1):
        t.step()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(len(t.data.images) // tiny.train.batch_size + 2):  # across an epoch boundary
            t.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    t.count_skipped()
    assert t.nonfinite_total == 0


@GPU
def test_gpu_captured_step_skips_non_finite_phases_on_the_device(tiny):
    """NaN real batches after the capture: the replays skip D's update as the eager step does."""
    graphed, eager = graphed_and_eager(tiny)
    for _ in range(WARMUP_STEPS + 2):
        graphed.step(), eager.step()
    for t in (graphed, eager):
        real_next, left = t.sampler.next, [2]

        def poisoned(b, real_next=real_next, left=left):
            left[0] -= 1
            return real_next(b) * (float("nan") if left[0] >= 0 else 1.0)

        t.sampler.next = poisoned
    results = [(graphed.step(), eager.step()) for _ in range(3)]
    assert [g.skipped for g, _ in results] == [e.skipped for _, e in results] == [["D"], ["D"], []]
    graphed.count_skipped(), eager.count_skipped()
    assert graphed.nonfinite_total == eager.nonfinite_total == 2
    assert_same_training(graphed, eager, atol=1e-5)


@GPU
def test_gpu_captured_step_resumes_from_a_checkpoint(tiny):
    """State saved from a captured trainer loads into a fresh one, which captures again and goes
    on as the saved one does."""
    tiny.accel.device, tiny.accel.optimizer_impl, tiny.accel.cuda_graphs = "cuda", "fused", True
    a = Trainer(tiny)
    for _ in range(STEPS):
        a.step()
    tensors, meta = a.state()
    b = Trainer(tiny)
    b.load_state({k: v.clone() for k, v in tensors.items()}, json.loads(json.dumps(meta)))
    for _ in range(STEPS):  # b warms up eagerly again, then captures
        assert a.step().floats() == pytest.approx(b.step().floats(), rel=1e-4, abs=1e-5)
    assert b.graph.graph is not None
    assert_same_training(a, b, atol=1e-5)


@GPU
@pytest.mark.parametrize(
    ("loss", "random"),
    [({}, False), ({"augment": "translation,cutout"}, True), ({"name": "wgan-gp", "n_critic": 2}, True)],
)
def test_gpu_captured_step_draws_fresh_randomness_in_the_loss(tiny, loss, random):
    """DiffAugment and WGAN-GP draw from the run's generator inside the captured step: each replay
    draws anew, so two replays on the same real batches and z, with the learning rates at 0 (no
    weight moves), give two D losses; a loss that draws nothing gives the same one twice."""
    tiny.accel.device, tiny.accel.optimizer_impl, tiny.accel.cuda_graphs = "cuda", "fused", True
    for name, value in loss.items():
        setattr(tiny.loss, name, value)
    t = Trainer(tiny.validate())
    for _ in range(STEPS):
        assert not t.step().skipped
    for opt in (t.opt_G, t.opt_D):
        for group in opt.param_groups:
            group["lr"].fill_(0.0)
    fixed = [t._inputs() for _ in range(t.loss.n_critic)]
    losses = []
    for _ in range(2):
        result = StepResult()
        t.graph.run(fixed, result)
        losses.append(float(result.losses["loss_d"]))
    assert (losses[0] != losses[1]) == random
    assert all(torch.isfinite(p).all() for p in t.G_ema.parameters())


@GPU
@pytest.mark.parametrize(
    ("accel", "message"),
    [
        ({"optimizer_impl": "foreach"}, "needs accel.optimizer_impl=fused"),
        ({"precision": "fp16"}, "does not work with accel.precision=fp16"),
        ({"d_device": "cpu"}, "D has parameters on cpu"),
    ],
)
def test_gpu_cuda_graphs_refuse_what_cannot_be_captured(tiny, accel, message):
    tiny.accel.device, tiny.accel.optimizer_impl, tiny.accel.cuda_graphs = "cuda", "fused", True
    for name, value in accel.items():
        setattr(tiny.accel, name, value)
    with pytest.raises(ConfigError, match=message):
        Trainer(tiny)


@GPU
def test_gpu_captured_run_resumed_from_its_run_directory_goes_on_as_the_whole_run(tiny, tmp_path):
    """`hetgan train` with the captured step, channels_last and a decaying learning rate, stopped
    halfway and resumed from its run directory (the resumed process warms up eagerly and captures
    again), ends where the uninterrupted run ends."""
    from safetensors.torch import load_file

    from hetgan.training.loop import train

    tiny.accel.device, tiny.accel.optimizer_impl, tiny.accel.cuda_graphs = "cuda", "fused", True
    tiny.accel.channels_last, tiny.optim.lr_decay, tiny.optim.decay_end_kimg = True, "linear", tiny.train.kimg
    full = load_file(str(train(tiny, out=tmp_path / "full", progress=False).run_dir / "generator.safetensors"))
    tiny.train.kimg /= 2
    part = train(tiny, out=tmp_path / "part", progress=False).run_dir
    train(resume=part, overrides=[f"train.kimg={2 * tiny.train.kimg}"], progress=False)
    resumed = load_file(str(part / "generator.safetensors"))
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=1e-4)
