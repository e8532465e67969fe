"""Data-parallel training (hetgan/training/distributed.py): real process groups, gloo, 2 ranks.

The slow tests start torchrun (with a timeout), as a user would: equivalence with one process,
agreement between ranks, a NaN on one rank, SIGTERM, a killed rank restarted, a change of world
size and a two-node rendezvous on loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from hetgan.augment import augment
from hetgan.cli import main
from hetgan.config import to_dict
from hetgan.data import ImageSampler, MixtureSampler, load_data
from hetgan.errors import CheckpointError, ConfigError, HetganError
from hetgan.losses import build_loss
from hetgan.presets import get_preset
from hetgan.shard import Shard
from hetgan.training.loop import train
from hetgan.training.rundir import write_config
from hetgan.training.trainer import Trainer
from tests.conftest import GPU, ROOT, benchmark_module, once_per_suite, run_benchmark, tiny_config

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
WORKER = ROOT / "tests" / "training" / "distributed_worker.py"


# --- the global batch and its parts ---------------------------------------------------------------
def test_parts_of_a_global_batch_cover_it_once():
    t = torch.arange(24).view(12, 2)
    parts = [Shard(r, 3).part(t) for r in range(3)]
    assert torch.equal(torch.cat(parts), t)
    # A joint batch: the real half and the fake half, each split over the ranks.
    joint = [Shard(r, 3).part(t, parts=2) for r in range(3)]
    assert torch.equal(joint[1][:, 0], torch.tensor([4, 6, 16, 18]))
    assert torch.equal(Shard(0, 1).part(t), t)


def test_a_batch_that_does_not_divide_over_the_ranks_is_a_clear_error():
    assert Shard(1, 4).local_batch(64) == 16
    with pytest.raises(ConfigError, match=r"train.batch_size=50 is the global batch .* 4 ranks.*48 or 52"):
        Shard(0, 4).local_batch(50)
    with pytest.raises(ConfigError, match=r"in packs of loss.pack=4.*batch_size=64 or 72"):
        Shard(0, 2).local_batch(68, pack=4)


def test_ranks_draw_their_part_of_the_same_data_and_augmentation(digits_npz):
    cfg = tiny_config(f"npz:{digits_npz}")
    data = load_data(cfg.data)
    whole = ImageSampler(data, 5, torch.device("cpu"))
    ranks = [ImageSampler(data, 5, torch.device("cpu"), Shard(r, 2)) for r in range(2)]
    for _ in range(20):  # past an epoch's end (128 images)
        assert torch.equal(whole.next(16), torch.cat([s.next(16) for s in ranks]))
    assert whole.state_dict() == ranks[1].state_dict()
    ring = load_data(get_preset("mlp_ring8").data)
    points = [MixtureSampler(ring, 1, torch.device("cpu"), Shard(r, 2)) for r in range(2)]
    single = MixtureSampler(ring, 1, torch.device("cpu"))
    assert torch.equal(single.next(10), torch.cat([p.next(10) for p in points]))
    x = torch.randn(8, 1, 16, 16)
    policy = ("translation", "cutout")
    expect = augment(x, policy, torch.Generator().manual_seed(0))
    got = [augment(Shard(r, 2).part(x), policy, torch.Generator().manual_seed(0), Shard(r, 2)) for r in range(2)]
    assert torch.equal(expect, torch.cat(got))


def test_gradient_penalty_mixing_is_drawn_for_the_global_batch():
    cfg = get_preset("mlp_ring8").loss
    cfg.name, cfg.pack = "wgan-gp", 2
    D = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1), nn.Flatten(0))
    real, fake = torch.randn(8, 2), torch.randn(8, 2)
    single = build_loss(cfg, torch.Generator().manual_seed(1)).gradient_penalty(D, real, fake)
    parts = [
        build_loss(cfg, torch.Generator().manual_seed(1), shard=Shard(r, 2)).gradient_penalty(
            D, Shard(r, 2).part(real), Shard(r, 2).part(fake)
        )
        for r in range(2)
    ]
    torch.testing.assert_close((parts[0] + parts[1]) / 2, single)


# --- equivalence with one process -----------------------------------------------------------------
def ghost_batch_norm(net: nn.Module, groups: int) -> None:
    """Make `net`'s BatchNorm layers normalise each of `groups` equal parts of a batch by its own
    statistics, as `groups` data-parallel ranks do: the one thing in which a data-parallel run is
    meant to differ from one process with the global batch."""
    for bn in net.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):

            def forward(x, bn=bn):
                return torch.cat(
                    [
                        F.batch_norm(c, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
                        for c in x.chunk(groups)
                    ]
                )

            bn.forward = forward


def equivalence_cases(npz: Path) -> dict[str, dict]:
    """The losses, regularisers and knobs whose gradients the ranks must combine correctly."""
    ring = get_preset("mlp_ring8")  # bce + R1, mlp
    ring.train.batch_size = 16
    hinge = tiny_config(f"npz:{npz}", arch="mlp")  # images, augmented, one forward of D for both
    hinge.loss.name, hinge.loss.augment = "hinge", "translation,cutout"
    hinge.accel.batch_layout, hinge.accel.optimizer_impl = "joint", "foreach"
    wgan = get_preset("mlp_ring8")
    wgan.loss.name, wgan.loss.n_critic, wgan.loss.pack, wgan.loss.r1_gamma = "wgan-gp", 5, 2, 0.0
    wgan.train.batch_size = 16
    maxout = get_preset("mlp_ring8")
    maxout.model.arch, maxout.model.width, maxout.model.g_depth, maxout.model.d_depth = "maxout", 32, 0, 0
    maxout.train.batch_size = 16
    resnet = tiny_config(f"npz:{npz}", arch="resnet")  # spectral norm in D, 5 D steps
    resnet.data.resolution, resnet.loss.name, resnet.loss.n_critic = 32, "hinge", 5
    resnet.accel.channels_last = True
    dcgan = tiny_config(f"npz:{npz}")  # BatchNorm in D too; fused Adam decides skips on the device
    dcgan.accel.optimizer_impl = "fused"
    configs = {"bce_r1": ring, "hinge_joint": hinge, "wgan_gp": wgan, "maxout": maxout, "resnet": resnet}
    configs["dcgan"] = dcgan
    cases = {}
    for name, cfg in configs.items():
        for dtype in ("float32", "float64"):
            cases[f"{name}-{dtype}"] = {"config": to_dict(cfg.validate()), "steps": 4, "dtype": dtype}
    nan = {"config": to_dict(ring), "steps": 4, "dtype": "float32", "nan_at": [1, 1]}
    return cases | {"nan_on_rank1": nan}


def single_process(case: dict, groups: int = 2) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[str]]:
    """The state before and after `case`'s steps in one process with the global batch (BatchNorm in
    `groups` parts), and the names of G's and D's parameters in the order their optimisers number
    them."""
    from hetgan.config import from_dict

    torch.set_default_dtype(getattr(torch, case["dtype"]))
    try:
        trainer = Trainer(from_dict(case["config"]))
        ghost_batch_norm(trainer.G, groups)
        ghost_batch_norm(trainer.D, groups)
        before = {k: v.clone() for k, v in trainer.state()[0].items()}
        for _ in range(case["steps"]):
            trainer.step()
        names = [f"{net}.{n}" for net in ("G", "D") for n, _ in getattr(trainer, net).named_parameters()]
        return before, trainer.state()[0], names
    finally:
        torch.set_default_dtype(torch.float32)


def dead_parameters(state: dict[str, torch.Tensor], names: list[str]) -> set[str]:
    """State keys of the parameters whose gradient is zero but for round-off in float64: biases that
    a BatchNorm downstream cancels (resnet's convolutions). Adam moves each of them by about lr in
    the direction of its round-off, which differs with any order of summation, one process or two."""
    n_g = sum(1 for n in names if n.startswith("G."))
    dead = set()
    for i, name in enumerate(names):
        opt, idx = ("opt_G", i) if i < n_g else ("opt_D", i - n_g)
        if state[f"{opt}.{idx}.exp_avg"].abs().max() < 1e-12:
            param = name.split(".", 1)[1]
            dead |= {k for k in state if k.startswith(f"{opt}.{idx}.")} | {name}
            dead |= {f"G_ema.{param}"} if name.startswith("G.") else set()
    return dead


def torchrun(*args: str, timeout: float = 240, check: bool = True) -> tuple[int, str]:
    """Run torchrun with `args` to its end; (exit status, what it and its workers printed)."""
    with tempfile.TemporaryFile("w+") as log:
        with started([*TORCHRUN, *args], log) as proc:
            code = proc.wait(timeout=timeout)
        log.seek(0)
        output = log.read()
    assert code == 0 or not check, output[-4000:]
    return code, output


@contextlib.contextmanager
def started(cmd: list[str], log):
    """A process in a session of its own writing to `log` (a path or a file: a pipe nobody reads
    would fill and stall it). The test ends it and everything it started (torchrun's workers) if
    it is still running, so no rank is left waiting in a collective."""
    with contextlib.ExitStack() as stack:
        f = stack.enter_context(open(log, "w")) if isinstance(log, Path) else log
        proc = stack.enter_context(
            subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        )
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def compared(state: dict[str, torch.Tensor], dead: set[str]) -> dict[str, torch.Tensor]:
    """What must agree with one process: parameters (G, D, G_ema), spectral norm's vectors and the
    optimiser state, but for `dead` parameters. Not BatchNorm's running statistics: they come from
    each rank's own slice."""
    return {
        k: v
        for k, v in state.items()
        if k.startswith(("G.", "D.", "G_ema.", "opt_"))
        and "running_" not in k
        and "num_batches" not in k
        and not k.endswith(".step")
        and k not in dead
    }


def max_rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k] - b[k]).double().abs().max() / b[k].double().abs().max().clamp_min(1e-12)).item() for k in a)


def moved_apart(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """How far apart two runs' parameters are, relative to how far training moved them:
    ||a - b|| / ||b - start|| over every parameter of G and D."""
    keys = [k for k in b if k.startswith(("G.", "D.")) and b[k].is_floating_point() and "running_" not in k]
    apart = sum((a[k].double() - b[k].double()).square().sum() for k in keys)
    moved = sum((b[k].double() - start[k].double()).square().sum() for k in keys)
    return float((apart / moved).sqrt())


@pytest.mark.slow
def test_two_ranks_train_as_one_process_with_the_global_batch(tmp_path, digits_npz):
    cases = equivalence_cases(digits_npz)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    torchrun("--standalone", "--nproc-per-node", "2", str(WORKER), str(tmp_path / "cases.json"), str(tmp_path))
    report = {}
    for name in cases:
        ranks = [load_file(tmp_path / f"{name}-rank{r}.safetensors") for r in range(2)]
        counters = [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(2)]
        # Ranks agree bit for bit on everything they save (BatchNorm's statistics averaged first).
        assert ranks[0].keys() == ranks[1].keys()
        for key in ranks[0]:
            if key != "rng.torch_cpu":
                assert torch.equal(ranks[0][key], ranks[1][key]), (name, key)
        assert counters[0] == counters[1]
    assert counters[0]["nonfinite_total"] == 1  # nan_on_rank1: rank 1's NaN made both skip that step
    for config in sorted({name.rsplit("-", 1)[0] for name in cases if "-" in name}):
        _, s64, names = single_process(cases[f"{config}-float64"])
        init32, s32, _ = single_process(cases[f"{config}-float32"])
        dead = dead_parameters(s64, names)
        d64, d32 = (load_file(tmp_path / f"{config}-{dtype}-rank0.safetensors") for dtype in ("float64", "float32"))
        report[config] = {
            "float64": max_rel(compared(d64, dead), compared(s64, dead)),
            "float32": moved_apart(compared(d32, dead), compared(s32, dead), init32),
            "dead": len(dead),
        }
    print(report)
    for r in report.values():
        assert r["float64"] < 1e-9, report  # the same sums, in another order
        # float32: round-off, amplified where Adam steps a component whose gradient is near zero by
        # about lr whatever its size (maxout's max also flips between pieces): 1e-6 of the way the
        # weights moved here, 3e-4 for maxout.
        assert r["float32"] < 2e-3, report


# --- the command line under torchrun: restarts, signals, world sizes, nodes ------------------------
RUN = ["-m", "hetgan", "train", "--preset", "mlp_ring8", "--no-progress", "--snapshot-kimg", "1"]
KIMG = 6  # 120 steps of the global batch of 50
# The settings of benchmarks/kill_storm.py's runs, so that its test compares with `two_rank_run`
RUN += ["--set", f"train.grid_kimg={KIMG}", "--set", "train.log_interval=5", "--set", "train.keep_checkpoints=10"]


def launch(out: Path, *extra: str, nproc: int = 2, kimg: float = KIMG) -> list[str]:
    return ["--standalone", "--nproc-per-node", str(nproc), *extra, *RUN, "--kimg", str(kimg), "--out", str(out)]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    newest = sorted((run / "checkpoints").glob("step-*"))[-1]
    return load_file(newest / "tensors.safetensors") | {
        f"artifact.{k}": v for k, v in load_file(run / "generator.safetensors").items()
    }


def assert_bitwise(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    keys = [k for k in a if k != "rng.torch_cpu"]
    assert keys == [k for k in b if k != "rng.torch_cpu"]
    differ = [k for k in keys if not torch.equal(a[k], b[k])]
    assert not differ, differ[:5]


@pytest.fixture(scope="session")
def two_rank_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run, the reference of the restart and rendezvous tests (once for
    the suite; they only read it)."""

    def build(out: Path) -> Path:
        torchrun(*launch(out, nproc=2), "--resume", "auto")
        return out

    return once_per_suite(tmp_path_factory, "two_rank_run", build)


@pytest.fixture(scope="session")
def one_process_run(tmp_path_factory) -> Path:
    """The reference run's first kimg in one process: how far round-off alone takes it."""

    def build(out: Path) -> Path:
        cmd = [sys.executable, *RUN, "--kimg", "1", "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-4000:]
        return out

    return once_per_suite(tmp_path_factory, "one_process_run", build)


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_ranks_killed_at_random_are_restarted_and_the_run_ends_bit_for_bit_as_uninterrupted(tmp_path, two_rank_run):
    """benchmarks/kill_storm.py, small: 3 SIGKILLs to random ranks at random moments under
    `torchrun --max-restarts`; the run resumes from its newest whole checkpoint each time and ends
    as an uninterrupted one (the suite's, trained with the storm's settings), bit for bit, with no
    partial checkpoint left."""
    out = tmp_path / "storm.json"
    args = ["--kills", "3", "--kimg", str(KIMG), "--snapshot-kimg", "1", "--max-wait", "4", "--json", str(out)]
    args += ["--reference", str(two_rank_run), "--out", str(tmp_path / "runs")]
    run_benchmark("kill_storm", *args, timeout=600, process=True)
    result = json.loads(out.read_text())
    assert len(result["kills"]) == 3 and result["kills"][0]["newest_checkpoint"]  # the first after a checkpoint
    assert result["resumes"] >= 1  # the group was restarted and went on from a checkpoint
    assert result["tensors"] > 0 and result["tensors_differ"] == [] and result["partial_checkpoints"] == []
    assert result["records"] > 0 and result["records_differ"] == []
    assert result["bitwise_equal"]


def test_the_kill_storm_refuses_a_reference_trained_otherwise(tmp_path):
    """kill_storm.py --reference RUN: a run trained with other settings (config.yaml, world size)
    is no reference; one that kept another number of checkpoints on disk is."""
    storm = benchmark_module("kill_storm")
    ours, theirs = tmp_path / "storm", tmp_path / "reference"
    for run, keep in ((ours, 3), (theirs, 10)):
        run.mkdir()
        (run / "config.yaml").write_text(f"seed: 0\ntrain:\n  kimg: 6.0\n  keep_checkpoints: {keep}\n")
        (run / "log.txt").write_text("INFO [rank 0/2] run directory x; device cpu (gloo, world size 2)\n")
    assert storm.settings_differ(theirs, ours) == []
    (theirs / "config.yaml").write_text("seed: 1\ntrain:\n  kimg: 6.0\n  keep_checkpoints: 10\n")
    (theirs / "log.txt").write_text("INFO run directory x; device cpu\n")  # one process
    assert storm.settings_differ(theirs, ours) == [
        "reference: seed: 1 / storm: seed: 0",
        "reference: world size 1 / storm: world size 2",
    ]
    # Before the storm: the settings it trains with, read from the reference's config and log.
    (theirs / "config.yaml").write_text(f"preset: mlp_ring8\nseed: 0\ntrain:\n  kimg: {KIMG}\n  grid_kimg: 4\n")
    args = storm.build_parser().parse_args(["--kimg", str(KIMG), "--snapshot-kimg", "1"])
    assert storm.storm_settings_missing(theirs, args) == [
        "train.snapshot_kimg 25.0, not 1.0",  # not in the file: the default
        "train.log_interval 20, not 5",
        "train.grid_kimg 4.0, not 6.0",
        "world size 1, not 2",
    ]


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_after_the_same_step(tmp_path):
    out = tmp_path / "run"
    cmd = [*TORCHRUN, *launch(out, kimg=1000)]
    with started(cmd, tmp_path / "torchrun.txt") as proc:
        wait_for(lambda: list((out / "checkpoints").glob("step-*")), "a checkpoint")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    stderr = (tmp_path / "torchrun.txt").read_text()
    stops = {}
    for line in stderr.splitlines():
        if "[rank " in line and "stopped by" in line and "checkpoint saved" in line:
            rank = line.split("[rank ", 1)[1].split("/", 1)[0]
            stops[rank] = int(line.split(" at step ", 1)[1].split(";", 1)[0])
    assert set(stops) == {"0", "1"}, stderr[-4000:]
    assert stops["0"] == stops["1"]
    newest = sorted((out / "checkpoints").glob("step-*"))[-1]
    assert newest.name == f"step-{stops['0']:09d}"  # committed, whole
    assert json.loads((newest / "state.json").read_text())["step"] == stops["0"]


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_run_resumes_on_another_number_of_ranks(tmp_path, two_rank_run, one_process_run, first, then):
    out = tmp_path / "run"
    torchrun(*launch(out, nproc=first, kimg=0.5), "--resume", "auto")  # 10 steps
    torchrun(*launch(out, nproc=then, kimg=1), "--resume", "auto", "--allow-config-change")  # 10 more
    start, ours, reference, alone = (
        load_file(run / "checkpoints" / f"step-{step:09d}" / "tensors.safetensors")
        for run, step in ((out, 10), (out, 20), (two_rank_run, 20), (one_process_run, 20))
    )
    # The change of world size costs nothing beyond the round-off of data parallelism itself: the
    # run is as close to the uninterrupted 2-rank run as one process training all 20 steps is. (In
    # float32 that round-off grows with the steps, as in any GAN: 1e-6 of the distance the weights
    # moved after 4 steps, about 1e-2 after 20; the equivalence test bounds it tightly in float64.)
    assert moved_apart(ours, reference, start) <= 1.5 * moved_apart(alone, reference, start)
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["kimg"] == 1


@pytest.mark.slow
def test_two_nodes_rendezvous_on_loopback_and_train_as_one_machine(tmp_path, two_rank_run):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    rdzv = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "hetgan-test"]
    cmd = [*TORCHRUN, *rdzv, "--rdzv-endpoint", f"127.0.0.1:{port}", *RUN, "--kimg", str(KIMG), "--out", str(out)]
    logs = [tmp_path / f"node{i}.txt" for i in range(2)]
    with started(cmd, logs[0]) as node0, started(cmd, logs[1]) as node1:
        codes = [node0.wait(timeout=240), node1.wait(timeout=240)]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]
    assert_bitwise(final_state(out), final_state(two_rank_run))


# --- one command that starts a run and continues it -------------------------------------------------
def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "generator.safetensors")


@pytest.mark.slow
def test_resume_auto_starts_a_run_then_continues_it(tiny, tmp_path):
    full = weights(train(tiny, out=tmp_path / "full", progress=False).run_dir)
    tiny.train.kimg = 0.08
    run = train(tiny, out=tmp_path / "auto", resume="auto", progress=False).run_dir  # new: started
    tiny.train.kimg = 0.16
    train(tiny, out=run, resume="auto", progress=False)  # has a checkpoint: continued
    assert "resumed from" in (run / "log.txt").read_text()
    assert all(torch.equal(full[k], weights(run)[k]) for k in full)


@pytest.mark.slow
def test_resume_auto_restarts_a_run_killed_before_its_first_checkpoint_from_step_zero(tiny, tmp_path):
    fresh = weights(train(tiny, out=tmp_path / "fresh", progress=False).run_dir)
    run = tmp_path / "killed"  # what a run killed before its first checkpoint leaves
    (run / "samples").mkdir(parents=True)
    write_config(run, tiny)
    (run / "log.txt").write_text("the first attempt\n")
    (run / "metrics.jsonl").write_text('{"step": 2, "kimg": 0.016}\n')
    (run / "checkpoints" / ".tmp-step-000000005-123").mkdir(parents=True)  # cut off mid-write
    with pytest.raises(CheckpointError, match="no checkpoints to resume from"):
        train(resume=run, progress=False)  # by hand, --resume still says what happened
    train(tiny, out=run, resume="auto", progress=False)
    assert all(torch.equal(fresh[k], weights(run)[k]) for k in fresh)
    steps = [
        [json.loads(line)["step"] for line in (r / "metrics.jsonl").read_text().splitlines()]
        for r in (run, tmp_path / "fresh")
    ]
    assert steps[0] == steps[1]  # the first attempt's record is gone
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_resume_auto_errors(tiny, tmp_path, capsys):
    with pytest.raises(HetganError, match="pass out=DIR"):
        train(tiny, resume="auto", progress=False)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.png").write_bytes(b"")
    with pytest.raises(HetganError, match="exists and is not empty"):
        train(tiny, out=other, resume="auto", progress=False)
    assert main(["train", "--resume", "auto", "--kimg", "0.01"]) == 2
    assert "--resume auto continues or starts the run directory given by --out" in capsys.readouterr().err


def test_placement_auto_is_refused_under_torchrun(monkeypatch, capsys, tmp_path):
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    assert main(["train", "--placement", "auto", "--out", str(tmp_path / "r")]) == 2
    assert "would tune on every rank" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting, message",
    [
        ("train.batch_size=51", "train.batch_size=51 is the global batch and must split evenly over 2 ranks"),
        ("accel.sync_batchnorm=true", "SyncBatchNorm, which runs on CUDA only, so a gloo (CPU) run cannot"),
    ],
)
@pytest.mark.slow
def test_settings_that_cannot_run_on_these_ranks_fail_clearly_on_every_rank(tmp_path, setting, message):
    out = tmp_path / "run"
    code, output = torchrun(*launch(out), "--set", setting, check=False)
    assert code != 0
    # Said once, plainly, by rank 0; rank 1's error goes into torchrun's failure summary (where it
    # replaces "To enable traceback see ..."), so an error that only another rank met would show.
    said = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(said) == 1 and message in said[0]
    assert f"traceback : error: {said[0].removeprefix('error: ')[:60]}" in output
    assert "exitcode  : 2" in output
    assert not out.exists()  # the run directory rank 0 made is cleaned away


@GPU
def test_one_gpu_under_torchrun_trains_over_nccl(tmp_path):
    out = tmp_path / "run"
    torchrun("--standalone", "--nproc-per-node", "1", *RUN, "--kimg", "1", "--device", "cuda", "--out", str(out))
    assert "device cuda:0 (nccl, world size 1)" in (out / "log.txt").read_text()
    assert (out / "generator.safetensors").exists()


@GPU
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_two_gpus_train_with_synchronised_batch_norm(tmp_path, digits_npz):
    out = tmp_path / "run"
    args = ["-m", "hetgan", "train", "--data", f"npz:{digits_npz}", "--kimg", "0.5", "--device", "cuda"]
    args += ["--set", "accel.sync_batchnorm=true", "--no-progress", "--out", str(out)]
    torchrun("--standalone", "--nproc-per-node", "2", *args)
    assert "(nccl, world size 2)" in (out / "log.txt").read_text()
    assert (out / "generator.safetensors").exists()


def test_a_signal_landing_during_the_stop_agreement_waits_for_the_next_one():
    """The race the SIGTERM test once lost under load: the handler ran on rank 0 while it waited in
    the agreement, rank 0 then stopped on its own flag, rank 1 on the collective's answer, and the
    two ranks' next collectives did not match. The collective's answer alone decides."""
    from hetgan.training.loop import StopSignal

    stop = StopSignal()

    class SignalDuringCollective:  # one rank's view: no rank had a signal when they agreed
        active = True

        def any_host(self, flag: bool) -> bool:
            stop.requested = "SIGTERM"
            return flag

    assert stop.agreed(SignalDuringCollective()) is False and not stop.stopping
    assert stop.agreed(SignalDuringCollective()) is True  # the next step's agreement stops


def test_ranks_agree_on_stopping_every_log_interval_steps_and_a_single_process_every_step():
    """In a process group the stop agreement is a host all-reduce, a network round trip: the ranks
    make it only at multiples of train.log_interval; one process has no one to ask and looks at
    its own signal at every step."""
    from hetgan.training.distributed import Distributed
    from hetgan.training.loop import StopSignal

    class Group:
        active = True
        calls = 0

        def any_host(self, flag: bool) -> bool:
            Group.calls += 1
            return flag

    stop = StopSignal()
    stop.requested = "SIGTERM"
    assert [stop.agreed(Group(), step, every=20) for step in (1, 19, 21, 39)] == [False] * 4 and Group.calls == 0
    assert stop.agreed(Group(), 40, every=20) is True and Group.calls == 1
    alone = StopSignal()
    alone.requested = "SIGINT"
    assert alone.agreed(Distributed(), 7, every=20) is True
