import copy
import os

import pytest
import torch

from hetgan.benchmarking.tune import Candidate, Trial, candidates_for, format_tune, time_candidates, tune
from hetgan.config import DataConfig, ModelConfig, TrainConfig, apply_overrides
from hetgan.errors import ConfigError, TuneError
from hetgan.presets import get_preset
from hetgan.training.trainer import Trainer


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
    import hetgan
    from hetgan.cli import main
    from hetgan.config import load_yaml, to_dict

    outputs = {key: (torch.ones(2), torch.ones(2)) for key in ("precision=fp32,threads=0", "precision=fp32,threads=1")}
    speeds = {"precision=fp32,threads=0": [100.0], "precision=fp32,threads=1": [150.0]}
    cands = [Candidate("base"), Candidate("one thread", ["accel.threads=1"])]
    seen = []

    def controlled(cfg, seconds, rounds):
        seen.append(cfg)
        return tune(cfg, seconds, rounds, candidates=cands, prepare=fake_prepare(speeds, outputs))

    monkeypatch.setattr(hetgan, "tune", controlled)  # what the command calls
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
