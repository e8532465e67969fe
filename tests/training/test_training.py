import json
import logging
import math
import os
import re
import shutil
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file

from hetgan.config import OptimConfig, load_yaml
from hetgan.deploy.load import load_generator
from hetgan.errors import CheckpointError, HetganError, TrainingDiverged, TrainingStopped
from hetgan.presets import PRESETS
from hetgan.report.html import build_report
from hetgan.training import loop
from hetgan.training.checkpoint import list_checkpoints, load_latest_checkpoint
from hetgan.training.loop import TrainResult, train
from hetgan.training.rundir import run_lock
from hetgan.training.trainer import Trainer, flag_needs_host, lr_scale
from tests.conftest import strict_loads, tiny_config


def weights(run_dir):
    return load_file(str(run_dir / "generator.safetensors"))


def test_run_directory_layout(tiny, tmp_path):
    run = train(tiny, out=tmp_path / "run", progress=False).run_dir
    assert (run / "config.yaml").is_file() and (run / "log.txt").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records and {"step", "kimg", "loss_d", "loss_g", "d_real", "d_fake", "img_per_s"} <= set(records[0])
    assert records[-1]["kimg"] <= 0.16
    grids = sorted(p.name for p in (run / "samples").iterdir())
    assert grids[0] == "final.png" and "step-000000000.png" in grids and len(grids) >= 3
    assert len(list_checkpoints(run / "checkpoints")) == 3  # keep_checkpoints
    assert (run / "generator.safetensors").is_file()


def test_train_prints_nothing_and_its_result_reports_the_outcome(tiny, tmp_path, capsys):
    result = train(tiny, out=tmp_path / "run", progress=False)
    assert capsys.readouterr().out == ""  # a library call leaves stdout to its caller
    assert result.stopped_by is None and result.steps == 20 and result.kimg == pytest.approx(0.16)  # 160 / batch 8
    assert "training finished" in result.summary() and str(result.run_dir / "generator.safetensors") in result.summary()
    assert result.img_per_s > 0 and f"speed:         {result.img_per_s:,.0f} img/s" in result.summary()
    assert "quality:       not measured during training (--eval-every KIMG)" in result.summary()
    assert "done:" in (result.run_dir / "log.txt").read_text()  # INFO reaches log.txt without logging set up
    assert logging.getLogger("hetgan").level == logging.NOTSET  # and the caller's level is restored


@pytest.mark.slow
def test_quiet_means_quiet_through_the_callers_logging_levels(tiny, tmp_path):
    """`train(progress=False)` in a script that set up logging at WARNING once printed every step
    and checkpoint line: log.txt gets them all, the caller's handlers what their levels ask for."""
    import io

    root, stream = logging.getLogger(), io.StringIO()
    handler, root_level = logging.StreamHandler(stream), root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # what logging.basicConfig() sets up
    try:
        result = train(tiny, out=tmp_path / "run", progress=False)
        run = result.run_dir
        warnings = stream.getvalue().splitlines()  # the alarms of this tiny run: warnings, as asked
        # and the end-of-training summary says so, where a user looks
        assert result.alarms and f"WARNING: {len(result.alarms)} alarm(s) during training" in result.summary()
        assert result.alarms[-1] in result.summary()
        assert all(line.startswith("ALARM") for line in warnings) and ": checkpoint step-" not in stream.getvalue()
        assert ": checkpoint step-" in (run / "log.txt").read_text()
        logging.getLogger("hetgan").setLevel(logging.INFO)  # a caller who asks for the progress lines
        train(tiny, out=tmp_path / "loud", progress=False)
        assert ": checkpoint step-" in stream.getvalue()
    finally:
        root.removeHandler(handler)
        root.setLevel(root_level)
        logging.getLogger("hetgan").setLevel(logging.NOTSET)


@pytest.mark.slow
def test_resuming_a_finished_run_changes_nothing(tiny, tmp_path):
    """A finished run resumed without a larger train.kimg (or with a smaller one) is left as it
    is: its config.yaml still says what it trained, and its outputs are not written again."""
    run = train(tiny, out=tmp_path / "run", progress=False).run_dir
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "log.txt"}
    for overrides in ([], ["train.kimg=0.08"]):
        result = train(resume=run, overrides=overrides, progress=False)
        assert result.already_done and result.steps == 20 and "nothing to do" in result.summary()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "log.txt"} == files
    assert "is finished at 0.2 kimg (train.kimg=0.08): nothing to do" in (run / "log.txt").read_text()
    result = train(resume=run, overrides=["train.kimg=0.24"], progress=False)  # extending still trains
    assert not result.already_done and result.steps == 30


def test_a_run_killed_while_finishing_is_finished_by_its_resume(tiny, tmp_path, monkeypatch):
    """The generator artifact is written last, so a run that dies among its final outputs (here
    in the plots: a crash, or a SIGKILL) has none, and its resume, with no steps left, writes them
    all rather than saying there is nothing to do."""

    def crash(run_dir):
        raise RuntimeError("killed while plotting")

    monkeypatch.setattr(loop, "make_plots", crash)
    with pytest.raises(RuntimeError, match="killed while plotting"):
        train(tiny, out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert (run / "samples" / "final.png").is_file() and not (run / "generator.safetensors").exists()
    monkeypatch.undo()
    result = train(resume=run, progress=False)
    assert not result.already_done and result.stopped_by is None and result.steps == 20
    assert (run / "generator.safetensors").is_file() and (run / "plots" / "losses.png").is_file()
    assert "done: 20 steps" in (run / "log.txt").read_text()


def test_a_signal_while_finishing_waits_for_the_final_outputs(tiny, tmp_path, monkeypatch):
    """Ctrl-C after the last step (here during the plots) lets the final outputs be written, and
    the run ends finished, not stopped."""

    class PastTheRun(Exception):
        """What SIGINT raises if it reaches the handler in place before training began."""

    def before_training(signum, frame):
        raise PastTheRun

    plots = loop.make_plots

    def interrupted(run_dir):
        os.kill(os.getpid(), signal.SIGINT)
        return plots(run_dir)

    monkeypatch.setattr(loop, "make_plots", interrupted)
    previous = signal.signal(signal.SIGINT, before_training)
    try:
        result = train(tiny, out=tmp_path / "run", progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert result.stopped_by is None and "training finished" in result.summary()
    assert (result.run_dir / "generator.safetensors").is_file() and (result.run_dir / "plots" / "losses.png").is_file()


def test_finished_passes_a_finished_run_and_refuses_a_stopped_one(tmp_path):
    """`TrainResult.finished()`, for scripts that go on to score a run: a run a signal stopped is
    an error that says how to continue it; a finished one (or one finished before) passes."""
    done = TrainResult(tmp_path, steps=20, kimg=0.16, stopped_by=None, nonfinite_steps=0)
    before = TrainResult(tmp_path, steps=20, kimg=0.16, stopped_by=None, nonfinite_steps=0, already_done=True)
    assert done.finished() is done and before.finished() is before
    stopped = TrainResult(tmp_path, steps=7, kimg=0.056, stopped_by="SIGTERM", nonfinite_steps=0)
    with pytest.raises(
        TrainingStopped, match=f"stopped by SIGTERM at step 7.*hetgan train --resume {re.escape(str(tmp_path))}"
    ):
        stopped.finished()


def test_resuming_with_another_network_names_the_checkpoint_and_keeps_the_run(tiny, tmp_path):
    tiny.train.kimg = 0.04
    run = train(tiny, out=tmp_path / "run", progress=False).run_dir
    config = (run / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"checkpoints/step-\d+: the checkpoint's G does not fit"):
        train(resume=run, overrides=["model.width=8"], allow_config_change=True, progress=False)
    assert (run / "config.yaml").read_text() == config


def test_run_directory_is_never_overwritten(tiny, tmp_path):
    train(tiny, out=tmp_path / "run", progress=False)
    with pytest.raises(HetganError, match="never overwritten"):
        train(tiny, out=tmp_path / "run", progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(HetganError, match="notes.txt: is a file; --out names the run directory"):
        train(tiny, out=tmp_path / "notes.txt", progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_numbered_run_dirs(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    tiny.train.kimg = 0.016
    assert train(tiny, progress=False).run_dir.name == "00000-tiny"
    assert train(tiny, progress=False).run_dir.name == "00001-tiny"


@pytest.mark.slow
def test_same_seed_same_weights_other_seed_differs(tiny, tmp_path):
    a = weights(train(tiny, out=tmp_path / "a", progress=False).run_dir)
    b = weights(train(tiny, out=tmp_path / "b", progress=False).run_dir)
    tiny.seed += 1
    c = weights(train(tiny, out=tmp_path / "c", progress=False).run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("arch,spec_kind,loss", [("mlp", "ring8", "wgan-gp"), ("dcgan", "npz", "hinge")])
@pytest.mark.slow
def test_resume_in_process_equals_uninterrupted(digits_npz, tmp_path, arch, spec_kind, loss):
    spec = "ring8" if spec_kind == "ring8" else f"npz:{digits_npz}"
    cfg = tiny_config(spec, arch=arch)
    cfg.loss.name = loss
    cfg.loss.n_critic = 2 if loss == "wgan-gp" else 1
    full = weights(train(cfg, out=tmp_path / "full", progress=False).run_dir)
    cfg.train.kimg = 0.08
    part = train(cfg, out=tmp_path / "part", progress=False).run_dir
    train(resume=part, overrides=["train.kimg=0.16"], progress=False)
    resumed = weights(part)
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_resume_refuses_other_config_unless_told(tiny, tmp_path):
    tiny.train.kimg = 0.04
    run = train(tiny, out=tmp_path / "r", progress=False).run_dir
    with pytest.raises(CheckpointError, match=r"optim.g_lr: checkpoint 0.0002, now 0.001"):
        train(resume=run, overrides=["optim.g_lr=0.001", "train.kimg=0.08"], progress=False)
    train(
        resume=run,
        overrides=["optim.g_lr=0.001", "train.kimg=0.08"],
        allow_config_change=True,
        progress=False,
    )
    assert "g_lr: 0.001" in (run / "config.yaml").read_text()
    _, _, meta = load_latest_checkpoint(run / "checkpoints")
    assert meta["opt_G"]["param_groups"][0]["lr"] == pytest.approx(0.001)  # not the 2e-4 saved with Adam's state


@pytest.mark.slow
def test_a_run_stores_its_paths_absolute_and_resumes_from_anywhere(digits_npz, tmp_path, monkeypatch):
    """data.spec's path and train.evalnet, given relative to the working directory, go into the
    run's config as absolute paths, so the run resumes from another directory (where the relative
    path names nothing), and a relative --data given there names the same file."""
    monkeypatch.chdir(digits_npz.parent)
    cfg = tiny_config("npz:digits.npz", kimg=0.08)
    cfg.train.evalnet = "nets/features.safetensors"  # not loaded: no evaluation during this run
    run = train(cfg, out=tmp_path / "run", progress=False).run_dir
    saved = load_yaml(run / "config.yaml")
    assert saved.data.spec == f"npz:{digits_npz}" and cfg.data.spec == "npz:digits.npz"  # the caller's is kept
    assert saved.train.evalnet == str(digits_npz.parent / "nets" / "features.safetensors")
    assert load_generator(run).config.data.spec == saved.data.spec  # eval --run reads the data from here
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert train(resume=run, overrides=["train.kimg=0.16"], progress=False).kimg == pytest.approx(0.16)
    monkeypatch.chdir(digits_npz.parent)
    overrides = ["train.kimg=0.24", "data.spec=npz:digits.npz"]
    assert train(resume=run, overrides=overrides, progress=False).kimg == pytest.approx(0.24)


@pytest.mark.slow
def test_a_run_with_relative_paths_from_before_resumes_from_its_directory(digits_npz, tmp_path, monkeypatch):
    """Runs made before paths were stored absolute hold them relative, in config.yaml and in their
    checkpoints; resumed from the directory they meant, they continue without a config change."""

    monkeypatch.chdir(digits_npz.parent)
    with monkeypatch.context() as old_version:
        old_version.setattr(loop, "with_absolute_paths", lambda cfg: cfg)
        run = train(tiny_config("npz:digits.npz", kimg=0.08), out=tmp_path / "run", progress=False).run_dir
    assert "spec: npz:digits.npz" in (run / "config.yaml").read_text()
    assert train(resume=run, overrides=["train.kimg=0.16"], progress=False).kimg == pytest.approx(0.16)
    assert load_yaml(run / "config.yaml").data.spec == f"npz:{digits_npz}"


def test_a_checkpoint_from_before_a_config_field_existed_resumes(digits_npz, tmp_path, monkeypatch):
    """A field added to the config since a checkpoint was written is missing from it; the run it
    belongs to ran as the field's default, so it resumes without a config change (a field the
    resume does change is still refused)."""
    from hetgan.config import to_dict
    from hetgan.training import trainer as trainer_module

    def as_before(cfg):
        raw = to_dict(cfg)
        del raw["accel"]["batch_layout"]
        return raw

    cfg = tiny_config(f"npz:{digits_npz}", arch="mlp", kimg=0.08)  # a D that could run joint
    with monkeypatch.context() as old_version:
        old_version.setattr(trainer_module, "to_dict", as_before)
        run = train(cfg, out=tmp_path / "run", progress=False).run_dir
    _, _, meta = load_latest_checkpoint(run / "checkpoints")
    assert "batch_layout" not in meta["config"]["accel"]
    with pytest.raises(CheckpointError, match=r"accel.batch_layout: checkpoint 'separate', now 'joint'"):
        train(resume=run, overrides=["train.kimg=0.16", "accel.batch_layout=joint"], progress=False)
    assert train(resume=run, overrides=["train.kimg=0.16"], progress=False).kimg == pytest.approx(0.16)


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_lr_decay_schedule(shape):
    optim = OptimConfig(lr_decay=shape, decay_start_kimg=10, decay_end_kimg=30, lr_final_scale=0.1)
    assert lr_scale(optim, 0) == lr_scale(optim, 10) == 1.0
    assert lr_scale(optim, 20) == pytest.approx(0.55)  # both shapes are half-way at the midpoint
    assert lr_scale(optim, 30) == lr_scale(optim, 1000) == pytest.approx(0.1)
    quarter = 1 - 0.9 * (0.25 if shape == "linear" else (1 - math.cos(math.pi / 4)) / 2)
    assert lr_scale(optim, 15) == pytest.approx(quarter)
    assert lr_scale(OptimConfig(), 1e9) == 1.0


def test_trainer_follows_the_lr_schedule(tiny):
    tiny.optim.lr_decay, tiny.optim.decay_end_kimg = "linear", 0.032  # 4 steps of 8 images
    t = Trainer(tiny)
    seen = []
    for _ in range(6):
        result = t.step()
        seen.append((t.opt_G.param_groups[0]["lr"] / tiny.optim.g_lr, t.opt_D.param_groups[0]["lr"] / tiny.optim.d_lr))
        assert result.losses["lr_scale"] == pytest.approx(seen[-1][0])
    assert [g for g, _ in seen] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0, 0.0])
    assert all(g == pytest.approx(d) for g, d in seen)


def params(*modules):
    return [p.detach().clone() for m in modules for p in m.parameters()]


def test_nonfinite_d_loss_skips_only_the_d_update(tiny):
    t = Trainer(tiny)
    t.step()
    d_before, g_before = params(t.D), params(t.G)
    opt_before = t.opt_D.state_dict()["state"][0]["exp_avg"].clone()
    real_next = t.sampler.next
    t.sampler.next = lambda b: real_next(b) * float("nan")  # poisoned real batch
    result = t.step()
    assert result.skipped == ["D"]
    assert all(torch.equal(p, q) for p, q in zip(d_before, params(t.D), strict=True))
    assert torch.equal(opt_before, t.opt_D.state_dict()["state"][0]["exp_avg"])
    assert not all(torch.equal(p, q) for p, q in zip(g_before, params(t.G), strict=True))
    assert t.nonfinite_in_row == 1 and t.nonfinite_total == 1
    t.sampler.next = real_next
    t.step()
    assert t.nonfinite_in_row == 0 and t.nonfinite_total == 1


def test_nonfinite_g_loss_skips_g_optimiser_and_ema(tiny):
    t = Trainer(tiny)
    t.step()
    with torch.no_grad():
        next(t.D.parameters()).fill_(float("nan"))  # every D output, so both losses, is NaN
    g_before, ema_before = params(t.G), params(t.G_ema)
    opt_before = t.opt_G.state_dict()["state"][0]["exp_avg"].clone()
    assert t.step().skipped == ["D", "G"]
    assert all(torch.equal(p, q) for p, q in zip(g_before, params(t.G), strict=True))
    assert all(torch.equal(p, q) for p, q in zip(ema_before, params(t.G_ema), strict=True))
    assert torch.equal(opt_before, t.opt_G.state_dict()["state"][0]["exp_avg"])


def poison_next_batches(t, n):
    """The next n real batches NaN (so D's loss is non-finite), then clean again."""
    real_next, left = t.sampler.next, [n]

    def next_batch(b):
        left[0] -= 1
        return real_next(b) * (float("nan") if left[0] >= 0 else 1.0)

    t.sampler.next = next_batch


def optimiser_tensors(opt):
    return [v for state in opt.state_dict()["state"].values() for v in state.values()]


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_fused_adam_skips_on_the_device_as_the_host_check_does(tiny, precision):
    """With fused Adam the skip is decided on the device; it must do what the host check does:
    same weights, EMA, optimiser state (Adam's step count too) and counts, step for step."""
    tiny.accel.optimizer_impl, tiny.accel.precision = "fused", precision
    on_device, on_host = Trainer(tiny), Trainer(tiny)
    on_host.skip_on_device = False
    assert on_device.skip_on_device
    if precision == "fp16":  # start where fp16 gradients do not overflow, so that steps update
        for t in (on_device, on_host):
            t.scaler_G, t.scaler_D = (torch.amp.GradScaler("cpu", init_scale=1.0) for _ in range(2))
    for t in (on_device, on_host):
        t.step()
        poison_next_batches(t, 2)  # two steps with D skipped
        t.step(), t.step()
        with torch.no_grad():
            next(t.D.parameters()).fill_(float("nan"))  # then both phases skip: D stays NaN
        t.step()
    results = [on_device.step(), on_host.step()]
    assert torch.is_tensor(results[0].nonfinite["G"]) and results[1].nonfinite["G"] is True
    assert results[0].skipped == results[1].skipped == ["D", "G"]
    assert on_device.nonfinite_total == 0  # not counted until settled
    on_device.count_skipped()
    assert (on_device.nonfinite_in_row, on_device.nonfinite_total) == (on_host.nonfinite_in_row, 4) == (4, 4)
    for a, b in [
        (params(on_device.G, on_device.G_ema, on_device.D), params(on_host.G, on_host.G_ema, on_host.D)),
        (optimiser_tensors(on_device.opt_G), optimiser_tensors(on_host.opt_G)),
        (optimiser_tensors(on_device.opt_D), optimiser_tensors(on_host.opt_D)),
    ]:
        for x, y in zip(a, b, strict=True):  # D's first weight is NaN in both
            torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True)
    steps = [opt.state_dict()["state"][0]["step"].item() for opt in (on_device.opt_G, on_device.opt_D)]
    assert steps == [3, 1]  # Adam counts only the updates it made


@pytest.mark.parametrize("impl", ["default", "fused"])
def test_a_step_counts_as_nonfinite_when_any_critic_phase_was(tiny, impl):
    """WGAN-GP runs n_critic D phases a step: a non-finite first one skips that update alone, and
    the step is counted, though the last D phase and the G phase were finite."""
    tiny.loss.name, tiny.loss.n_critic, tiny.accel.optimizer_impl = "wgan-gp", 2, impl
    t = Trainer(tiny)
    t.step()
    d_steps = t.opt_D.state_dict()["state"][0]["step"].item()
    poison_next_batches(t, 1)
    result = t.step()
    t.count_skipped()
    assert result.skipped == ["D"] and t.nonfinite_total == 1
    assert t.opt_D.state_dict()["state"][0]["step"].item() == d_steps + 1  # the second D phase updated


def test_fused_adam_step_never_reads_a_tensor_on_the_host(tiny, monkeypatch):
    """What makes a CUDA step wait for the GPU: bool(), float() or .item() of a tensor. With the
    skip on the device, a step does none of these until the non-finite count is settled."""
    tiny.accel.optimizer_impl = "fused"
    t = Trainer(tiny)
    t.step()  # optimiser state is created on the first step

    def no_sync(*args):
        raise AssertionError("the step read a tensor on the host")

    with monkeypatch.context() as m:
        for name in ("__bool__", "__float__", "__int__", "item", "tolist"):
            m.setattr(torch.Tensor, name, no_sync)
        results = [t.step() for _ in range(3)]
    assert len(t._uncounted) == 4 and t.step_count == 4
    t.count_skipped()
    assert not t._uncounted and all(r.skipped == [] for r in results)
    assert set(results[0].floats()) >= {"loss_d", "loss_g"}


def test_a_flag_from_an_accelerator_is_read_on_the_host_for_cpu_readers():
    """Fused Adam and the EMA copy a skip flag to each parameter's device without waiting; a copy
    from a GPU to the CPU that is not waited for may be read before it lands, so such a flag is
    read on the host."""
    cpu, gpu, gpu1 = torch.device("cpu"), torch.device("cuda", 0), torch.device("cuda", 1)
    assert flag_needs_host(gpu, {gpu, cpu})  # e.g. G split over the GPU and the CPU
    assert flag_needs_host(torch.device("mps"), {cpu})  # a loss on the GPU, the optimiser on the CPU
    assert not flag_needs_host(gpu, {gpu, gpu1})  # the copy between GPUs is ordered on the device
    assert not flag_needs_host(cpu, {gpu, cpu})  # from the host to a GPU is safe to leave
    assert not flag_needs_host(cpu, {cpu})


def test_divergence_found_on_the_device_names_the_step(tiny):
    tiny.accel.optimizer_impl = "fused"
    tiny.train.max_nonfinite_steps = 2
    t = Trainer(tiny)
    t.step()
    poison_next_batches(t, 2)
    t.step(), t.step(), t.step()  # steps 2 and 3 non-finite, counted only when settled
    with pytest.raises(TrainingDiverged, match="2 steps in a row had non-finite losses, the last at step 3"):
        t.state()  # a checkpoint settles first: a diverged run saves none


def test_a_run_whose_set_up_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    """Bad data stops `train` before any step: the run folder it made is removed, so the same
    --out works once the data is fixed; a folder the user made stays, empty."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "broken.png").write_bytes(b"not an image")
    cfg = tiny_config(f"folder:{folder}")
    with pytest.raises(HetganError, match="broken.png"):
        train(cfg, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(HetganError, match="broken.png"):
        train(cfg, out=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())
    monkeypatch.chdir(tmp_path)
    with pytest.raises(HetganError, match="broken.png"):
        train(cfg, progress=False)  # runs/NNNNN-tiny
    assert not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_a_run_being_written_cannot_be_resumed_a_second_time(tiny, tmp_path):
    """A second `train --resume` of a run that a live process is writing is refused, and
    leaves the run as it was; once the first one has let go, the resume goes ahead."""
    run = train(tiny, out=tmp_path / "run", progress=False).run_dir
    metrics = (run / "metrics.jsonl").read_text()
    with run_lock(run):  # as a `train` in another process holds it
        with pytest.raises(HetganError, match=r"being written by another `hetgan train` \(pid \d+ on "):
            train(resume=run, overrides=["train.kimg=0.24"], progress=False)
    assert (run / "metrics.jsonl").read_text() == metrics
    assert train(resume=run, overrides=["train.kimg=0.24"], progress=False).kimg == pytest.approx(0.24)


def test_a_file_system_without_locks_trains_unguarded(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with run_lock(tmp_path):
        entered = True
    assert entered and "cannot lock" in caplog.text


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "hetgan-prefetch"]


@pytest.mark.slow
def test_train_bench_and_tune_leave_no_loader_thread_behind(tiny, tmp_path):
    from hetgan.benchmarking.training import bench
    from hetgan.benchmarking.tune import Candidate, tune

    tiny.data.loader = "prefetch"
    train(tiny, out=tmp_path / "run", progress=False)
    assert not prefetch_threads()
    bench(tiny, seconds=0.2, rounds=1, textbook=False)
    assert not prefetch_threads()
    tune(tiny, seconds=0.2, rounds=2, candidates=[Candidate("plain"), Candidate("t1", ["accel.threads=1"])])
    assert not prefetch_threads()
    t = Trainer(tiny)
    t.step()
    assert prefetch_threads()  # what the calls above must stop
    t.close()
    assert not prefetch_threads()


def test_divergence_stops_and_keeps_last_good_checkpoint(tiny, tmp_path):
    tiny.optim.g_lr = tiny.optim.d_lr = 1e30
    tiny.train.max_nonfinite_steps = 3
    with pytest.raises(TrainingDiverged, match=r"3 steps in a row had non-finite losses, the last at step \d+"):
        train(tiny, out=tmp_path / "d", progress=False)
    assert not (tmp_path / "d" / "generator.safetensors").exists()
    records = [strict_loads(line) for line in (tmp_path / "d" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["loss_d"] is None for r in records)  # a non-finite loss is null: strict JSON
    assert "not finite" in build_report(tmp_path / "d").read_text()  # plotted and shown without it


@pytest.mark.parametrize("preset", PRESETS.names())
@pytest.mark.slow
def test_every_preset_trains_a_few_steps(preset, tmp_path):
    import numpy as np

    from hetgan.config import apply_overrides
    from hetgan.presets import get_preset

    cfg = get_preset(preset)
    shrink = [
        "train.kimg=0.032",
        "train.batch_size=8",
        "train.grid_size=4",
        "train.log_interval=1",
        "model.width=8",
        "accel.device=cpu",
    ]
    if preset == "resnet_cifar10":  # CIFAR-10 itself is not shipped: an RGB npz of the same shape
        np.savez(tmp_path / "rgb.npz", images=np.random.default_rng(0).integers(0, 255, (64, 32, 32, 3), np.uint8))
        shrink.append(f"data.spec=npz:{tmp_path / 'rgb.npz'}")
    run = train(apply_overrides(cfg, shrink), out=tmp_path / "run", progress=False).run_dir
    assert (run / "generator.safetensors").is_file()
    assert not any(json.loads(line)["nonfinite_total"] for line in (run / "metrics.jsonl").read_text().splitlines())


def test_every_run_ends_with_a_metrics_record(tiny, tmp_path):
    """A run shorter than a log interval wrote no metrics.jsonl, which its summary listed; and a
    run whose last step fell between log lines had no record of it (issue 26)."""
    import json

    tiny.train.log_interval = 2
    for kimg, steps in ((0.008, 1), (0.024, 3)):
        tiny.train.kimg = kimg
        run = train(tiny, out=tmp_path / f"run-{steps}", progress=False).run_dir
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == list(range(2, steps, 2)) + [steps]
        assert records[-1]["img_per_s"] > 0 and "loss_d" in records[-1]


def test_progress_bar_counts_whole_images_and_stops_at_its_total(tiny, tmp_path, capsys, monkeypatch):
    """It showed float round-off (10.240000000000007/60.0) and ended past 100 % with tqdm's
    'clamping frac' warning (issue 26). 0.02 kimg at batch 8 is 3 steps, 24 images: past 20."""
    import sys
    import warnings

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # tqdm draws only on a terminal
    tiny.train.kimg = 0.02
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # TqdmWarning would fail the run
        train(tiny, out=tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "20.0/20.0 [" in err and "img/s" in err and "24.0/20.0" not in err
    assert not re.search(r"\d\.\d{6,}/", err)  # no round-off in the count


@pytest.mark.slow
def test_tensorboard_gets_scalars_grids_and_evals(tmp_path):
    """--set train.tensorboard=true: the standard SummaryWriter's event files, read back with
    TensorBoard's own reader (issue 26)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import tiny_config

    cfg = tiny_config("mnist5k")
    cfg.train.tensorboard, cfg.train.eval_kimg, cfg.train.eval_n = True, 0.08, 100
    run = train(cfg, out=tmp_path / "run", progress=False).run_dir
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    scalars = events.Tags()["scalars"]
    assert {"train/loss_d", "train/loss_g", "train/d_acc", "eval/fid"} <= set(scalars)
    assert [e.step for e in events.Scalars("eval/fid")] == [10, 20]
    assert [e.step for e in events.Scalars("train/loss_d")] == list(range(2, 21, 2))
    assert len(events.Images("samples")) == 2  # a grid each 0.08 kimg
    assert not (tmp_path / "plain").exists()
    cfg.train.tensorboard = False
    assert not (train(cfg, out=tmp_path / "plain", progress=False).run_dir / "tensorboard").exists()


@pytest.mark.slow
def test_a_resumed_run_drops_the_events_it_is_about_to_redo_from_tensorboard(tmp_path):
    """A run killed after its checkpoint at step 10 had logged steps 11-20; its resume redoes them.
    The resumed writer marks step 11 for purging (TensorBoard's own reader then drops the old
    events from there on), so each step's scalars appear once: the checkpoint's step 10 kept, the
    redone ones after it. (It once marked step 10, and step 10's record was lost.)"""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.compat.proto.event_pb2 import SessionLog

    cfg = tiny_config("mnist5k")
    cfg.train.tensorboard = True
    run = train(cfg, out=tmp_path / "run", progress=False).run_dir  # 20 steps, checkpoints every 5
    for late in ("step-000000015", "step-000000020"):  # as if killed after step 20, before its outputs
        shutil.rmtree(run / "checkpoints" / late)
    (run / "generator.safetensors").unlink()
    train(resume=run, progress=False)
    files = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    marks = [e.step for e in EventFileLoader(str(files[1])).Load() if e.session_log.status == SessionLog.START]
    assert marks == [11]  # the purge marker: what was logged after the checkpoint's step 10 is dropped
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in events.Scalars("train/loss_d")] == list(range(2, 21, 2))


def test_tensorboard_without_its_package_fails_the_set_up_and_leaves_no_run(tiny, tmp_path, monkeypatch):
    import sys

    for module in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises
    tiny.train.tensorboard = True
    with pytest.raises(HetganError, match=r"needs the package 'tensorboard'.*pip install 'hetgan\[tensorboard\]'"):
        train(tiny, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_overrides_apply_to_a_new_run_and_leave_the_callers_config(tiny, tmp_path):
    """`hetgan.train(cfg, overrides=[...]).run_dir` starts the run with them (they were once read on resume only)."""
    run = train(tiny, tmp_path / "run", overrides=["train.kimg=0.04", "loss.name=hinge"], progress=False).run_dir
    saved = load_yaml(run / "config.yaml")
    assert saved.train.kimg == 0.04 and saved.loss.name == "hinge"
    assert tiny.train.kimg == 0.16 and tiny.loss.name == "bce"  # the caller's config is not changed
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["kimg"] == pytest.approx(0.04)
