import logging
import shutil
import subprocess
import sys

import pytest
import torch

from hetgan.errors import CheckpointError
from hetgan.training import checkpoint as ckpt
from hetgan.training.trainer import Trainer
from tests.conftest import GPU


def save(root, step, value=1.0, keep=3):
    return ckpt.save_checkpoint(root, step, {"w": torch.full((3,), value)}, {"step": step}, keep=keep)


def test_round_trip_and_pruning(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, float(step), keep=3)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [
        "step-000000003",
        "step-000000004",
        "step-000000005",
    ]
    path, tensors, state = ckpt.load_latest_checkpoint(tmp_path)
    assert path.name == "step-000000005" and state == {"step": 5}
    assert tensors["w"].tolist() == [5.0] * 3


def test_corrupt_newest_falls_back_with_warning(tmp_path, caplog):
    save(tmp_path, 1, 1.0)
    newest = save(tmp_path, 2, 2.0)
    data = (newest / ckpt.TENSORS).read_bytes()
    (newest / ckpt.TENSORS).write_bytes(data[: len(data) // 2])  # truncated
    with caplog.at_level(logging.WARNING, logger="hetgan"):
        path, tensors, _ = ckpt.load_latest_checkpoint(tmp_path)
    assert path.name == "step-000000001" and tensors["w"][0] == 1.0
    assert "step-000000002" in caplog.text and "truncated or corrupt" in caplog.text


def test_bit_flip_is_detected(tmp_path):
    path = save(tmp_path, 1)
    data = bytearray((path / ckpt.STATE).read_bytes())
    data[2] ^= 1
    (path / ckpt.STATE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the manifest"):
        ckpt.read_checkpoint(path)


def test_all_corrupt_is_an_error(tmp_path):
    path = save(tmp_path, 1)
    (path / ckpt.MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="every checkpoint is corrupt"):
        ckpt.load_latest_checkpoint(tmp_path)


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1, 1.0)
    calls = {"n": 0}
    real_write = ckpt.write_bytes_durable

    def dying_write(path, data):
        calls["n"] += 1
        if calls["n"] == 2:  # die after the tensors, before state and manifest
            raise KeyboardInterrupt("simulated kill")
        real_write(path, data)

    monkeypatch.setattr(ckpt, "write_bytes_durable", dying_write)
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path, 2, 2.0)
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000000001"]
    save(tmp_path, 3, 3.0)  # the next save clears the half-written temp dir
    assert not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize(
    "knobs",
    [{}, {"channels_last": True}, {"precision": "fp16"}, {"optimizer_impl": "foreach"}, {"optimizer_impl": "fused"}],
    ids=["plain", "channels_last", "fp16", "foreach", "fused"],
)
def test_trainer_state_round_trip_is_exact(tiny, tmp_path, knobs):
    """Also under the knobs tune picks: channels_last weights are saved contiguous and restored
    into the channels_last layout, fp16 keeps its loss scale."""
    for name, value in knobs.items():
        setattr(tiny.accel, name, value)
    a = Trainer(tiny)
    for _ in range(3):
        a.step()
    tensors, meta = a.state()
    ckpt.save_checkpoint(tmp_path, a.step_count, tensors, meta, keep=2)
    _, tensors2, meta2 = ckpt.load_latest_checkpoint(tmp_path)
    b = Trainer(tiny)
    b.load_state(tensors2, meta2)
    for _ in range(3):
        a.step()
        b.step()
    for name in ("G", "D", "G_ema"):
        for (k, x), (_, y) in zip(
            getattr(a, name).state_dict().items(), getattr(b, name).state_dict().items(), strict=True
        ):
            assert torch.equal(x, y), f"{name}.{k} differs after restore"
    assert b.opt_G.state_dict()["state"][0]["step"] == a.opt_G.state_dict()["state"][0]["step"]


def test_resuming_a_run_without_checkpoints_says_what_to_do(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints to resume from.*start it again with another --out"):
        ckpt.load_latest_checkpoint(tmp_path / "checkpoints")


CUDA_RNG_STATE = torch.zeros(16, dtype=torch.uint8)  # a CUDA generator's state: seed and offset


@pytest.mark.parametrize("rng_device", ["cuda", None], ids=["named", "before-rng_device"])
def test_resuming_on_another_device_type_reseeds_z_with_a_warning(tiny, caplog, rng_device):
    """A run trained on a GPU and resumed on the CPU (e.g. under --device auto) cannot continue
    the GPU generator's stream: z is reseeded from the seed and the step, with a warning, and the
    run goes on. Checkpoints from before `rng_device` was kept are told apart by their state's form."""
    a = Trainer(tiny)
    for _ in range(2):
        a.step()
    tensors, meta = a.state()
    assert meta["rng_device"] == "cpu"
    tensors["rng.train"] = CUDA_RNG_STATE
    if rng_device is None:
        del meta["rng_device"]
    else:
        meta["rng_device"] = rng_device
    b = Trainer(tiny)
    with caplog.at_level(logging.WARNING, logger="hetgan"):
        b.load_state(tensors, meta)
    assert f"drawn on {rng_device or 'another device type'} and this run draws it on cpu" in caplog.text
    expected = torch.Generator().manual_seed(tiny.seed + 1 + 2).get_state()
    assert torch.equal(b.rng.get_state(), expected) and b.step_count == 2
    assert not b.step().skipped


@GPU
def test_gpu_run_resumes_on_the_cpu_and_back(tiny, caplog):
    tiny.accel.device = "cuda"
    on_gpu = Trainer(tiny)
    on_gpu.step()
    tiny.accel.device = "cpu"
    on_cpu = Trainer(tiny)
    with caplog.at_level(logging.WARNING, logger="hetgan"):
        on_cpu.load_state(*on_gpu.state())
        on_cpu.step()
        tiny.accel.device = "cuda"
        back = Trainer(tiny)
        back.load_state(*on_cpu.state())
    assert "drawn on cuda and this run draws it on cpu" in caplog.text
    assert "drawn on cpu and this run draws it on cuda" in caplog.text
    assert not back.step().skipped and back.step_count == 3


def resumed_through_a_file(tiny, tmp_path) -> tuple[Trainer, Trainer]:
    a = Trainer(tiny)
    a.step()
    ckpt.save_checkpoint(tmp_path, 1, *a.state(), keep=1)
    b = Trainer(tiny)
    b.load_state(*ckpt.load_latest_checkpoint(tmp_path)[1:])
    return a, b


def test_resumed_optimiser_state_takes_its_parameters_layout(tiny, tmp_path):
    """A checkpoint holds contiguous tensors; resumed into channels_last parameters, Adam's moments
    get the parameters' strides again (CUDA's fused Adam refuses a mismatch: seen on an H100)."""
    tiny.accel.channels_last = True
    a, b = resumed_through_a_file(tiny, tmp_path)
    for opt in (b.opt_G, b.opt_D):
        convolved = [p for p in opt.state if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1]
        assert convolved and all(p.stride() != p.contiguous().stride() for p in convolved)  # channels_last
        for p in convolved:
            assert opt.state[p]["exp_avg"].stride() == opt.state[p]["exp_avg_sq"].stride() == p.stride()
    assert a.step().floats() == b.step().floats()


@GPU
def test_gpu_fused_channels_last_run_resumes_from_a_file(tiny, tmp_path):
    tiny.accel.device, tiny.accel.channels_last, tiny.accel.optimizer_impl = "cuda", True, "fused"
    a, b = resumed_through_a_file(tiny, tmp_path)
    assert a.step().floats() == pytest.approx(b.step().floats())


@pytest.mark.parametrize("impls", [("default", "fused"), ("fused", "default")], ids=["to-fused", "from-fused"])
def test_a_resumed_optimiser_takes_its_settings_from_the_config_not_the_checkpoint(tiny, impls):
    """Resumed with --allow-config-change, the run's new betas and Adam implementation apply. The
    checkpoint's used to win: a run switched to fused Adam kept the per-parameter one, which
    ignores the device-side skip flag, so a non-finite step was applied."""
    tiny.accel.optimizer_impl = impls[0]
    a = Trainer(tiny)
    a.step()
    tiny.accel.optimizer_impl, tiny.optim.beta1 = impls[1], 0.0
    b = Trainer(tiny)
    b.load_state(*a.state())
    for opt in (b.opt_G, b.opt_D):
        group = opt.param_groups[0]
        assert group["betas"] == (0.0, tiny.optim.beta2) and bool(group["fused"]) == (impls[1] == "fused")
    with torch.no_grad():
        next(b.D.parameters()).fill_(float("nan"))  # both phases' losses are non-finite: skipped
    g_before = [p.detach().clone() for p in b.G.parameters()]
    assert b.step().skipped == ["D", "G"]
    assert all(torch.equal(x, y) for x, y in zip(g_before, b.G.parameters(), strict=True))


def test_a_run_resumed_into_fp16_starts_a_fresh_loss_scale(tiny):
    """An fp32 checkpoint has no loss scale; resumed with --set accel.precision=fp16
    --allow-config-change, the run starts one (it was a KeyError)."""
    a = Trainer(tiny)
    a.step()
    tiny.accel.precision = "fp16"
    b = Trainer(tiny)
    b.load_state(*a.state())
    assert b.scaler_G.get_scale() == torch.amp.GradScaler("cpu").get_scale() and b.step_count == 1
    b.step()
    assert all(torch.isfinite(p).all() for p in b.G_ema.parameters())


def test_a_network_changed_on_resume_is_a_clear_error(tiny):
    """--allow-config-change with another model.width: a CheckpointError naming the first
    mismatched tensor and what cannot change, not torch's list of every size mismatch."""
    a = Trainer(tiny)
    tiny.model.width *= 2
    with pytest.raises(
        CheckpointError, match=r"checkpoint's G does not fit .*size mismatch for net\.0\.weight.*model\.\*"
    ):
        Trainer(tiny).load_state(*a.state())


def test_a_full_disk_is_said_plainly_and_leaves_no_partial_checkpoint(tmp_path):
    """On a real size-limited file system (a 1 MiB tmpfs in a mount namespace of its own): a
    checkpoint that fits is written; one that does not is a CheckpointError naming the checkpoint,
    the space it needed, the last good one and how to resume, with its partial write removed at
    once and the good one intact."""
    if not shutil.which("unshare"):
        pytest.skip("needs util-linux's unshare to mount a small tmpfs")
    script = f"""
import os, sys, torch
from hetgan.errors import CheckpointError
from hetgan.training.checkpoint import list_checkpoints, read_checkpoint, save_checkpoint
root = {str(tmp_path / "run")!r} + "/checkpoints"
save_checkpoint(__import__("pathlib").Path(root), 1, {{"w": torch.ones(1000)}}, {{"step": 1}}, keep=3)
try:
    save_checkpoint(__import__("pathlib").Path(root), 2, {{"w": torch.ones(500_000)}}, {{"step": 2}}, keep=3)
except CheckpointError as e:
    print("ERROR", e)
print("LEFT", sorted(os.listdir(root)))
tensors, state = read_checkpoint(list_checkpoints(__import__("pathlib").Path(root))[-1])
print("GOOD", state["step"], float(tensors["w"].sum()))
"""
    (tmp_path / "run").mkdir()
    mount = f'mount -t tmpfs -o size=1m tmpfs {tmp_path / "run"} && exec {sys.executable} -c "$0"'
    cmd = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", mount, script]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0 and "mount" in done.stderr and "ERROR" not in done.stdout:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()[-200:]}")
    assert done.returncode == 0, done.stderr
    error = next(line for line in done.stdout.splitlines() if line.startswith("ERROR"))
    assert "step-000000002" in error and "the disk is full" in error and "it needs 1.9 MiB" in error
    assert "the last good checkpoint" in error and "step-000000001" in error and "hetgan train --resume" in error
    assert "LEFT ['step-000000001']" in done.stdout  # no .tmp-* directory left
    assert "GOOD 1 1000.0" in done.stdout
