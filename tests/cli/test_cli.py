import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hetgan.cli import main
from hetgan.config import load_yaml
from hetgan.training.monitor import rank


def run_cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "hetgan", *args], capture_output=True, text=True, **kw)


TINY = [
    "--set",
    "model.width=4",
    "--set",
    "model.z_dim=8",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.grid_size=4",
    "--set",
    "train.log_interval=2",
    "--set",
    "accel.device=cpu",
    "--seed",
    "3",
    "--no-progress",
]


def test_help_lists_registries(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("dcgan_mnist", "mlp_grid25", "resnet", "wgan-gp", "folder:DIR"):
        assert name in out


def test_bad_set_is_a_clear_error(capsys):
    assert main(["train", "--set", "train.batchsize=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config field 'train.batchsize'" in err and "train.batch_size" in err


def test_resume_refuses_flags_that_would_replace_its_config(capsys, tmp_path):
    for flags, message in [
        (["--preset", "mlp_ring8"], "--preset cannot be combined with --resume"),
        (["--config", "c.yaml"], "--config cannot be combined with --resume"),
        (["--placement", "auto"], "--placement auto cannot be combined with --resume"),
    ]:
        assert main(["train", "--resume", str(tmp_path), *flags]) == 2
        assert message in capsys.readouterr().err


def test_config_file_is_a_base_for_flags_and_set(tmp_path, capsys):
    """`--config` starts from a YAML file (a run's config.yaml, say) instead of a preset; flags and
    --set change it as they change a preset, for train, bench, tune and layers alike."""
    from hetgan.cli import build_parser
    from hetgan.cli.common import base_config

    path = tmp_path / "c.yaml"
    path.write_text("preset: mine\nmodel:\n  arch: mlp\n  width: 24\ndata:\n  spec: ring8\n")
    for command in ("train", "bench", "tune", "layers"):
        cfg = base_config(build_parser().parse_args([command, "--config", str(path)]))
        assert (cfg.preset, cfg.model.arch, cfg.model.width, cfg.data.spec) == ("mine", "mlp", 24, "ring8")
    run = tmp_path / "run"
    args = ["train", "--config", str(path), "--kimg", "0.02", "--set", "train.batch_size=10", "--out", str(run)]
    assert main([*args, "--no-progress"]) == 0
    written = load_yaml(run / "config.yaml")
    assert (written.preset, written.model.width, written.train.kimg, written.train.batch_size) == ("mine", 24, 0.02, 10)
    assert main(["layers", "--config", str(path)]) == 0
    assert "Linear(in_features=2, out_features=48" in capsys.readouterr().out  # D's first layer: 2w units
    with pytest.raises(SystemExit):
        main(["train", "--config", str(path), "--preset", "mlp_ring8"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_data_and_device_flags_become_config_overrides():
    from hetgan.cli import build_parser
    from hetgan.cli.common import flag_overrides

    devices = ["--device", "cpu", "--g-device", "cuda:1", "--d-device", "cpu"]
    for command in ("train", "bench", "tune"):
        args = build_parser().parse_args([command, "--data", "ring8", *devices])
        expected = ["data.spec=ring8", "accel.device=cpu", "accel.g_device=cuda:1", "accel.d_device=cpu"]
        assert flag_overrides(args) == expected
    assert flag_overrides(build_parser().parse_args(["layers", "--data", "grid25"])) == ["data.spec=grid25"]
    assert flag_overrides(build_parser().parse_args(["train"])) == []


def test_missing_data_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the resnet preset looks for data/cifar-10-batches-bin
    assert main(["train", "--data", f"folder:{tmp_path}/nope", "--out", str(tmp_path / "r")]) == 2
    assert f"{tmp_path}/nope: image folder does not exist; give a folder of PNG" in capsys.readouterr().err
    # The resnet preset reads CIFAR-10, which is not shipped: the error says where to put it.
    assert main(["train", "--preset", "resnet_cifar10", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "data/cifar-10-batches-bin: CIFAR-10 folder does not exist; extract CIFAR-10's binary" in err
    assert "--data cifar10:DIR" in err and not (tmp_path / "r").exists()


def test_train_then_sample_all_forms(digits_npz, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", f"npz:{digits_npz}", "--kimg", "0.04", "--out", str(run), *TINY]) == 0
    assert "run directory" in capsys.readouterr().out
    assert main(["sample", "--run", str(run), "--n", "6", "--seed", "1", "--out", str(tmp_path / "a.npz")]) == 0
    assert (
        main(
            [
                "sample",
                "--artifact",
                str(run / "generator.safetensors"),
                "--n",
                "6",
                "--seed",
                "1",
                "--out",
                str(tmp_path / "b.npz"),
            ]
        )
        == 0
    )
    a, b = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "b.npz")["images"]
    assert a.shape == (6, 32, 32, 1) and np.array_equal(a, b)
    assert main(["sample", "--run", str(run), "--n", "4", "--out", str(tmp_path / "g.png")]) == 0
    assert main(["sample", "--run", str(run), "--n", "3", "--out", str(tmp_path / "dir") + "/"]) == 0
    assert len(list((tmp_path / "dir").glob("*.png"))) == 3


def test_sample_refuses_an_n_whose_samples_do_not_fit_in_memory(digits_npz, tmp_path, capsys, monkeypatch):
    """`--n 100000000` used to end in numpy's traceback (1.1 TiB). An n whose latent codes and
    samples (twice for a grid or an .npz, which build a copy) exceed the free memory is refused
    before sampling; an allocation that fails all the same is a clear error too."""
    from hetgan import sample_files, sampling
    from hetgan.deploy.load import load_generator

    run = tmp_path / "run"
    assert main(["train", "--data", f"npz:{digits_npz}", "--kimg", "0.008", "--out", str(run), *TINY]) == 0
    G = load_generator(run)
    for form, out, copies in (("png", "g.png", 2), ("npz", "a.npz", 2), ("folder", "d/", 1)):
        need = 10 * G.z_dim * 4 + 10 * 32 * 32 * copies  # float32 codes, uint8 [1, 32, 32] samples
        assert sample_files.memory_needed(G, 10, form) == need
        monkeypatch.setattr(sample_files, "available_memory", lambda need=need: need - 1)
        capsys.readouterr()
        assert main(["sample", "--run", str(run), "--n", "10", "--out", f"{tmp_path}/{out}"]) == 2
        assert f"--n 10: 10 samples written as {form} take about " in capsys.readouterr().err
        assert not (tmp_path / out).exists()
        monkeypatch.setattr(sample_files, "available_memory", lambda need=need: need)
        assert main(["sample", "--run", str(run), "--n", "10", "--out", f"{tmp_path}/{out}"]) == 0

    def allocation_fails(*args, **kwargs):
        raise MemoryError("Unable to allocate 1.12 TiB for an array")

    monkeypatch.setattr(sample_files, "available_memory", lambda: None)  # not known: no check
    monkeypatch.setattr(sampling, "sample_uint8", allocation_fails)
    assert main(["sample", "--run", str(run), "--n", "10", "--out", str(tmp_path / "b.npz")]) == 2
    assert "error: out of memory (Unable to allocate 1.12 TiB for an array); ask for less" in capsys.readouterr().err


def test_data_check_exit_codes(tmp_path, capsys, caplog):
    (tmp_path / "bad.png").write_bytes(b"nope")
    assert main(["data", "check", f"folder:{tmp_path}"]) == 1
    assert f"BAD {tmp_path / 'bad.png'}: not a readable image" in capsys.readouterr().out  # the file named once
    assert not [r for r in caplog.records if "bad.png" in r.getMessage()]  # and reported once, not also logged
    assert main(["data", "check", "mnist5k"]) == 0


def final_weights(run):
    return load_file(str(run / "generator.safetensors"))


def wait_for(predicate, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(digits_npz, tmp_path):
    """A `hetgan train` process killed with SIGKILL, resumed: the weights and samples of the run
    trained without a break (the reference, the resume and the samples run in this process)."""
    args = ["train", "--data", f"npz:{digits_npz}", "--kimg", "1.2", "--snapshot-kimg", "0.1", *TINY]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hetgan", *args, "--out", str(run)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = run / "checkpoints"
    assert wait_for(lambda: ckpts.is_dir() and len([p for p in ckpts.iterdir() if p.name.startswith("step")]) >= 2)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (run / "generator.safetensors").exists(), "run finished before the kill: test proves nothing"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    full, again = final_weights(tmp_path / "full"), final_weights(run)
    assert all(torch.equal(full[k], again[k]) for k in full)
    for r in (tmp_path / "full", run):
        assert main(["sample", "--run", str(r), "--n", "8", "--out", str(r / "s.npz")]) == 0
    assert np.array_equal(np.load(tmp_path / "full" / "s.npz")["images"], np.load(run / "s.npz")["images"])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), "metrics.jsonl repeats steps after resume"


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_exits_zero(digits_npz, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hetgan",
            "train",
            "--data",
            f"npz:{digits_npz}",
            "--kimg",
            "50",
            "--snapshot-kimg",
            "40",
            "--out",
            str(run),
            *TINY,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_for(lambda: (run / "metrics.jsonl").exists())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped by SIGTERM" in out and "--resume" in out
    ckpts = list((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 1 and not (run / "generator.safetensors").exists()


@pytest.mark.slow
def test_default_preset_runs_end_to_end_via_cli(tmp_path):
    """`hetgan train` with the default preset (bundled digits), shortened to a few steps."""
    env = dict(os.environ)
    result = run_cli("train", "--kimg", "0.256", "--out", str(tmp_path / "run"), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    assert "final samples" in result.stdout
    assert (tmp_path / "run" / "samples" / "final.png").is_file()
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "preset: dcgan_mnist" in cfg and "spec: mnist5k" in cfg


def test_eval_every_logs_metrics_and_keeps_best(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "mlp_ring8", "--kimg", "0.4", "--eval-every", "0.2", "--out", str(run)]
    args += ["--set", "model.width=16", "--set", "train.batch_size=20", "--no-progress"]
    assert main(args) == 0
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r.get("eval")]
    assert [r["kimg"] for r in evals] == [0.2, 0.4]
    assert all(0 <= r["high_quality"] <= 1 and r["modes_total"] == 8 for r in evals)
    best = json.loads((run / "best.json").read_text())
    winner = min(evals, key=lambda r: rank(r, "modes"))  # most modes, then high quality, then reverse KL
    assert best["metric"] == "modes" and (best["kimg"], best["reverse_kl"]) == (winner["kimg"], winner["reverse_kl"])
    assert (run / "generator-best.safetensors").exists()


@pytest.mark.slow
def test_train_placement_auto_writes_the_choice_into_the_run_config(tmp_path, caplog, monkeypatch):
    """`train --placement auto` tunes, prints the table and trains with the chosen knobs, which
    the run's config.yaml records. Timings are controlled so that a non-plain candidate wins."""
    import yaml

    from hetgan.benchmarking.tune import Trial
    from hetgan.config import apply_overrides
    from hetgan.presets import get_preset

    monkeypatch.setattr(Trial, "img_per_s", lambda self, seconds: 1000.0 if self.cfg.accel.threads == 1 else 100.0)
    run = tmp_path / "run"
    args = ["--preset", "mlp_ring8", "--kimg", "0.1", "--out", str(run), "--no-progress", "--set", "model.width=16"]
    with caplog.at_level("INFO", logger="hetgan"):  # as the command's own logging set-up has it
        assert main(["train", "--placement", "auto", "--tune-seconds", "0.3", *args]) == 0
    # The table is logged before training starts (the command's log goes to stderr); here, to caplog.
    chosen = next(line for line in caplog.text.splitlines() if line.startswith("chosen: "))
    overrides = [flag for flag in chosen.split(": ", 2)[-1].split() if flag != "--set" and "=" in flag]
    expected = apply_overrides(get_preset("mlp_ring8"), ["model.width=16", *overrides]).accel
    assert yaml.safe_load((run / "config.yaml").read_text())["accel"] == vars(expected)
    if torch.get_num_threads() != 1:  # threads=1 is a candidate wherever torch runs more threads
        assert overrides == ["accel.threads=1"] and expected.threads == 1


@pytest.mark.slow
def test_output_cut_short_by_the_reader_is_not_a_crash():
    """`hetgan layers | head -1`: the closed pipe ends the command quietly, without a traceback."""
    done = subprocess.run(
        f"{sys.executable} -m hetgan layers | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert done.stdout.startswith("G (hetgan.models.dcgan.Generator)") and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["sample", "--run", "RUN", "--n", "4", "--out", "{file}/x.png"], "is a file, so no folder can be made there"),
        (["sample", "--run", "RUN", "--n", "4", "--out", "{file}/"], "is a file, not a folder"),
        (["sample", "--run", "RUN", "--n", "4", "--out", "{tmp}/x.gif"], "unknown output form '.gif'"),
        (["report", "RUN", "--out", "{tmp}"], "that is a folder; name a file in it, e.g. --out"),
        (["evalnet", "train", "--data", "mnist5k", "--out", "{tmp}"], "that is a folder; name a file in it"),
    ],
)
def test_output_paths_are_checked_before_the_work(tmp_path, capsys, command, message):
    """A path the command cannot write is refused first: here before the run (which does not
    exist) is even read, so no finished work is lost to it."""
    (tmp_path / "afile").write_text("")
    args = [a.format(file=tmp_path / "afile", tmp=tmp_path).replace("RUN", str(tmp_path / "no-run")) for a in command]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_ctrl_c_outside_training_exits_quietly(monkeypatch, capsys):
    """Ctrl-C during `hetgan bench` (or tune, eval...) ends with "interrupted" and exit status
    130, the shell's code for SIGINT, not a traceback."""
    import hetgan

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(hetgan, "bench", interrupted)  # what the command calls
    assert main(["bench", "--preset", "mlp_ring8"]) == 130
    assert capsys.readouterr().err.strip().endswith("interrupted")


def test_unknown_flags_suggest_the_closest_one(capsys):
    for args, hint in (
        (["train", "--kimgg", "3"], "--kimgg: did you mean --kimg?"),
        (["data", "check", "mnist5k", "--chanels", "3"], "--chanels: did you mean --channels?"),
        (["sample", "--run", "r", "--out", "x.png", "--sed", "3"], "--sed: did you mean --seed?"),
    ):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and hint in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--zzzzzz"])
    assert "(see hetgan train --help)" in capsys.readouterr().err


def test_resuming_a_missing_directory_says_so(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2
    assert f"{tmp_path / 'nope'}: no such run directory" in capsys.readouterr().err


def test_data_check_prints_what_the_data_is(tmp_path, capsys):
    from PIL import Image

    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 40, 3), 30 * i, dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    assert main(["data", "check", f"folder:{tmp_path}", "--channels", "3"]) == 1
    out = capsys.readouterr().out
    stored = "(stored 40x40, centre-cropped to a square, then resized with Lanczos to 32x32)"
    assert f"folder:{tmp_path}: 6 images, 2 classes, 32x32 colour {stored} (the good items)" in out and "BAD " in out
    assert main(["data", "check", "mnist5k"]) == 0
    line = "mnist5k: 5000 images, 10 classes, 32x32 grayscale (stored 28x28, centre-cropped to a square, then "
    assert line + "resized with Lanczos to 32x32)\nmnist5k: no problems found" in capsys.readouterr().out


def test_evalnet_train_makes_its_output_folder_before_training(tmp_path, digits_npz, capsys):
    out = tmp_path / "missing" / "dir" / "net.safetensors"
    assert main(["evalnet", "train", "--data", f"npz:{digits_npz}", "--out", str(out), "--epochs", "1"]) == 0
    assert out.is_file() and "wrote" in capsys.readouterr().out


def test_evaluate_defaults_to_the_cli_sample_count(tmp_path):
    """hetgan.evaluate and `hetgan eval` score 2-D data on 2500 samples (they gave 7/8 and 5/8
    modes for one generator when the Python default was 5000)."""
    import hetgan
    from hetgan.artifact import save_generator
    from hetgan.models import build_models
    from tests.conftest import tiny_config

    cfg = tiny_config("ring8", arch="mlp")
    path = save_generator(build_models(cfg)[0], cfg, tmp_path / "g.safetensors")
    G = hetgan.load_generator(path)
    assert hetgan.evaluate(G)["n_generated"] == 2500
    assert main(["eval", "--artifact", str(path), "--json", str(tmp_path / "e.json")]) == 0
    from_cli, from_python = json.loads((tmp_path / "e.json").read_text()), hetgan.evaluate(G)
    for key in ("n_generated", "modes_captured", "high_quality", "mode_counts"):
        assert from_cli[key] == from_python[key]


def test_sample_into_a_folder_never_overwrites_silently(tiny, tmp_path, capsys):
    from hetgan.artifact import save_generator
    from hetgan.models import build_models

    path = str(save_generator(build_models(tiny)[0], tiny, tmp_path / "g.safetensors"))
    out = str(tmp_path / "pngs") + "/"
    assert main(["sample", "--artifact", path, "--n", "3", "--seed", "1", "--out", out]) == 0
    first = (tmp_path / "pngs" / "00000.png").read_bytes()
    assert main(["sample", "--artifact", path, "--n", "2", "--seed", "2", "--out", out]) == 2
    assert "already holds 3 samples; pass --append" in capsys.readouterr().err
    assert (tmp_path / "pngs" / "00000.png").read_bytes() == first  # untouched
    assert main(["sample", "--artifact", path, "--n", "2", "--seed", "2", "--out", out, "--append"]) == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    assert (tmp_path / "pngs" / "00000.png").read_bytes() == first
    assert main(["sample", "--artifact", path, "--n", "2", "--seed", "2", "--out", out, "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "pngs").iterdir()) == ["00000.png", "00001.png"]
    assert (tmp_path / "pngs" / "00000.png").read_bytes() != first
    (tmp_path / "pngs" / "notes.txt").write_text("mine")
    assert main(["sample", "--artifact", path, "--n", "2", "--out", out, "--overwrite"]) == 2
    assert "holds 1 other files (e.g. notes.txt)" in capsys.readouterr().err
    assert (tmp_path / "pngs" / "notes.txt").read_text() == "mine"


def test_resume_auto_keeps_allow_config_change(digits_npz, tmp_path):
    """A requeued job that changes a rate: `--resume auto` once dropped --allow-config-change and
    refused with "pass --allow-config-change" however often it was passed."""
    run = tmp_path / "run"
    base = ["train", "--data", f"npz:{digits_npz}", "--snapshot-kimg", "0.008", "--out", str(run), *TINY]
    assert main([*base, "--kimg", "0.008", "--resume", "auto"]) == 0
    more = [*base, "--kimg", "0.016", "--resume", "auto", "--set", "optim.g_lr=0.0001"]
    assert main(more) == 2  # a changed field must be confirmed
    assert main([*more, "--allow-config-change"]) == 0
    assert "g_lr: 0.0001" in (run / "config.yaml").read_text()
