"""hetgan compress: structured pruning, distillation, the search, and their bad inputs."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hetgan.artifact import load_torch_generator, recalibrated_copy, save_generator
from hetgan.cli import main
from hetgan.compression.prune import macs, prune_generator, widths_of
from hetgan.compression.search import Candidate, choose, pareto_front, search
from hetgan.compression.student import prune_and_distil, student_config
from hetgan.config import DistillConfig
from hetgan.deploy.load import load_generator
from hetgan.errors import CheckpointError, ConfigError, HetganError, TrainingStopped
from hetgan.models import build_models
from hetgan.training import loop
from tests.conftest import tiny_config

PIXEL_ONLY = DistillConfig(feature_weight=0.0, adversarial_weight=0.0)


@pytest.mark.parametrize("arch", ["dcgan", "mlp", "maxout", "resnet"])
@pytest.mark.slow
def test_a_pruned_generator_keeps_its_shape_and_reloads_from_its_artifact(tmp_path, digits_npz, arch):
    cfg = tiny_config(f"npz:{digits_npz}", arch=arch)
    cfg.model.width = 16
    cfg.data.resolution = 32 if arch in ("dcgan", "resnet") else 28
    G, _ = build_models(cfg)
    z = torch.randn(5, cfg.model.z_dim)
    pruned = prune_generator(G, cfg, 0.5)
    widths = widths_of(pruned, arch)
    assert widths != widths_of(G, arch) and all(w > 0 for w in widths)
    assert pruned.eval()(z).shape == G.eval()(z).shape  # z in, the same image out
    assert macs(pruned, cfg.model.z_dim) < macs(G, cfg.model.z_dim)
    student_cfg = student_config(cfg, tmp_path, widths, 1.0, None, DistillConfig())
    rebuilt, _ = build_models(student_cfg)
    rebuilt.load_state_dict(pruned.state_dict())
    assert torch.equal(rebuilt.eval()(z), pruned(z))
    path = save_generator(pruned, student_cfg, tmp_path / "student.safetensors")
    loaded = load_torch_generator(path)
    assert loaded.config.model.g_widths == widths
    assert torch.equal(loaded(z), recalibrated_copy(pruned, cfg.model.z_dim)(z))


def test_magnitude_and_bn_scale_rank_channels_differently(digits_npz):
    cfg = tiny_config(f"npz:{digits_npz}")
    cfg.model.width = 8
    G, _ = build_models(cfg)
    scales = torch.linspace(2, 0.1, 32)
    with torch.no_grad():  # BatchNorm scales falling with the channel, the weights' norms rising
        G.net[1].weight.copy_(scales)
        G.net[0].weight.mul_(10 * torch.arange(1, 33).view(1, 32, 1, 1))  # [z_dim, C_out, 4, 4]
    a, b = prune_generator(G, cfg, 0.5, "magnitude"), prune_generator(G, cfg, 0.5, "bn_scale")
    assert widths_of(a, "dcgan") == widths_of(b, "dcgan")
    assert torch.equal(b.net[1].weight, scales[:16])  # the largest BatchNorm scales kept
    assert a.net[1].weight.max() < 1.1  # the channels with the largest weights kept, not those scales


def distance_to_teacher(artifact, teacher_run) -> float:
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(9))
    return (load_torch_generator(artifact)(z) - load_torch_generator(teacher_run)(z)).abs().mean().item()


@pytest.mark.slow
def test_distillation_brings_the_student_closer_to_its_teacher(tmp_path, teacher):
    student = prune_and_distil(teacher, tmp_path / "c", prune=0.5, kimg=0.32, weights=PIXEL_ONLY, progress=False)
    assert student.widths == [16, 8, 4]
    config = load_torch_generator(student.artifact).config
    G, _ = build_models(config)  # where it started: the pruned teacher compress wrote
    G.load_state_dict(load_file(tmp_path / "c" / "init.safetensors"))
    start = save_generator(G, config, tmp_path / "start.safetensors")
    before, after = distance_to_teacher(start, teacher), distance_to_teacher(student.artifact, teacher)
    assert after < 0.85 * before, (before, after)  # 0.050 -> 0.039 when written
    records = [json.loads(line) for line in (student.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["distill_l1"] < records[0]["distill_l1"]
    assert "loss_d" not in records[-1]  # without the adversarial term there is no D phase
    info = json.loads((tmp_path / "c" / "compress.json").read_text())
    assert info["mac_reduction"] == pytest.approx(student.teacher_macs / student.macs) and info["mac_reduction"] > 2


@pytest.mark.slow
def test_the_student_is_an_ordinary_artifact_that_exports(tmp_path, teacher):
    weights = DistillConfig(feature_weight=0.0)  # the npz data has no feature network
    student = prune_and_distil(teacher, tmp_path / "c", width=4, kimg=0.08, weights=weights, progress=False)
    records = [json.loads(line) for line in (student.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"distill_l1", "g_adversarial", "loss_d"} <= set(records[-1])  # adversarial: D fine-tuned
    G = load_generator(student.artifact)
    assert G.sample(3, seed=1).shape == (3, 1, 32, 32)
    pytest.importorskip("onnxruntime")
    from hetgan.deploy.export import export

    result = export(load_torch_generator(student.artifact), "onnx", tmp_path / "student.onnx")
    assert result.check.max_abs_error < 1e-4
    assert torch.allclose(load_generator(tmp_path / "student.onnx").sample(3, seed=1), G.sample(3, seed=1), atol=1e-4)


@pytest.mark.slow
def test_an_interrupted_compression_resumes_exactly(tmp_path, teacher, monkeypatch):
    """Ctrl-C during the student's training: the command stops with an error that says how to go on
    (not with a half-trained student passed on as the result), and the same command again continues
    it to what an uninterrupted run gives, bit for bit."""
    kw = {"prune": 0.5, "weights": DistillConfig(feature_weight=0.0), "progress": False, "kimg": 0.16}
    whole = prune_and_distil(teacher, tmp_path / "whole", **kw)
    snapshot = loop.snapshot

    def ctrl_c_at_the_first_checkpoint(trainer, run_dir):
        monkeypatch.setattr(loop, "snapshot", snapshot)
        os.kill(os.getpid(), signal.SIGINT)  # the loop's handler: stop after this step
        snapshot(trainer, run_dir)

    monkeypatch.setattr(loop, "snapshot", ctrl_c_at_the_first_checkpoint)
    with pytest.raises(TrainingStopped, match="stopped by SIGINT at step .* run the same `hetgan compress` command"):
        prune_and_distil(teacher, tmp_path / "parts", **kw)
    assert not (tmp_path / "parts" / "student" / "generator.safetensors").exists()
    resumed = prune_and_distil(teacher, tmp_path / "parts", **kw)  # the same command again
    a, b = load_file(whole.artifact), load_file(resumed.artifact)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed from" in (resumed.run_dir / "log.txt").read_text()


@pytest.mark.slow
def test_a_student_trained_from_scratch_is_an_ordinary_gan_run(tmp_path, teacher):
    student = prune_and_distil(teacher, tmp_path / "s", prune=0.5, kimg=0.04, scratch=True, progress=False)
    config = load_torch_generator(student.artifact).config
    assert config.model.g_widths == [16, 8, 4] and not config.distill.teacher
    assert not (tmp_path / "s" / "init.safetensors").exists()


@pytest.mark.slow
def test_bad_inputs_say_what_to_do(tmp_path, teacher, capsys):
    with pytest.raises(ConfigError, match=r"--prune 1.5: the share of channels to remove must be between 0 and 1"):
        prune_and_distil(teacher, tmp_path / "x", prune=1.5)
    with pytest.raises(ConfigError, match=r"--width 64: a student is narrower than its teacher \(model.width 8\)"):
        prune_and_distil(teacher, tmp_path / "x", width=64)
    with pytest.raises(ConfigError, match="one way"):
        prune_and_distil(teacher, tmp_path / "x")
    bare = tmp_path / "bare"  # a teacher run that kept only its artifact and config
    bare.mkdir()
    for name in ("config.yaml", "generator.safetensors"):
        shutil.copy(teacher / name, bare / name)
    with pytest.raises(CheckpointError, match=r"no checkpoint with a discriminator .* \(--adversarial-weight 0\)"):
        prune_and_distil(
            bare, tmp_path / "y", prune=0.5, kimg=0.04, weights=DistillConfig(feature_weight=0.0), progress=False
        )
    prune_and_distil(bare, tmp_path / "z", prune=0.5, kimg=0.04, weights=PIXEL_ONLY, progress=False)  # without D: fine
    with pytest.raises(HetganError, match="no feature network .* --feature-weight 0"):
        prune_and_distil(teacher, tmp_path / "f", prune=0.5, kimg=0.04, weights=DistillConfig(), progress=False)
    assert main(["compress", "--run", str(teacher), "--out", str(tmp_path / "c"), "--prune", "0"]) == 2
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_a_missing_torch_pruning_names_the_install(monkeypatch, digits_npz):
    real_import = builtins.__import__

    def no_torch_pruning(name, *args, **kwargs):
        if name == "torch_pruning":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch_pruning)
    cfg = tiny_config(f"npz:{digits_npz}")
    with pytest.raises(HetganError, match=r"pip install 'hetgan\[compress\]'"):
        prune_generator(build_models(cfg)[0], cfg, 0.5)


# --- the search ---------------------------------------------------------------------------------
def cand(name: str, ms: float, score: float) -> Candidate:
    return Candidate(name, 0.5, 1, ms, score, f"/x/{name}")


def test_the_search_picks_the_fastest_candidate_within_the_quality_bound():
    teacher = cand("teacher", 10.0, 100.0)
    students = [cand("a", 2.0, 125.0), cand("b", 3.0, 108.0), cand("c", 5.0, 101.0), cand("d", 6.0, 109.0)]
    assert [c.name for c in pareto_front(students)] == ["a", "b", "c"]
    chosen, decision = choose(students, teacher, 0.10, target_ms=4.0)
    assert chosen.name == "b" and "chose b" in decision  # a is faster but 25 % worse
    chosen, decision = choose(students, teacher, 0.10, target_ms=2.5)
    assert chosen is None and "the fastest within the quality bound, b, takes 3 ms" in decision
    chosen, decision = choose(students, teacher, 0.001, target_ms=50)
    assert chosen is None and "the best, c, scores 101" in decision


@pytest.mark.slow
def test_search_writes_every_candidate_and_the_choice(tmp_path, teacher):
    """Every ratio is pruned and timed first, in rounds, with the teacher; only the ratios within
    the target are distilled and scored, and the fastest within the quality bound is chosen."""
    timings = {"0.500": 4.0, "0.750": 2.0}
    scores = {"0.500": 1.02, "0.750": 1.05}
    timed = []

    def measure(artifact):
        key = "teacher" if artifact.parent.name == "teacher" else artifact.parent.parent.name.split("-")[1]
        timed.append((key, artifact.parent.name))
        return 8.0 if key == "teacher" else timings[key]

    def score(artifact):
        return 1.0 if artifact.parent.name == "teacher" else scores[artifact.parent.parent.name.split("-")[1]]

    out = tmp_path / "search"
    kw = {"ratios": (0.5, 0.75), "kimg": 0.04, "weights": PIXEL_ONLY, "progress": False}
    chosen = search(teacher, out, 3.0, measure=measure, score=score, importance="bn_scale", **kw)
    assert chosen.name == "prune-0.750"  # the fastest, within 10 % of the teacher's score
    # timed pruned, before any distillation, in 3 rounds of the teacher and both ratios in turn
    assert timed == [("teacher", "teacher"), ("0.500", "pruned"), ("0.750", "pruned")] * 3
    # --importance reaches every distilled candidate (it was once dropped here); 0.500 was too slow to distil
    assert json.loads((out / "candidates" / "prune-0.750" / "compress.json").read_text())["importance"] == "bn_scale"
    assert not (out / "candidates" / "prune-0.500").exists()
    record = json.loads((out / "search.json").read_text())
    assert [c["ms"] for c in record["candidates"]] == [2.0] and record["chosen"] == "prune-0.750"
    assert [(c["name"], c["ms"]) for c in record["too_slow"]] == [("prune-0.500", 4.0)]
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "search.md").read_text()
    assert "| prune-0.750 | 0.750 |" in table and "| prune-0.500 | 0.500 |" in table and "too slow |" in table
    assert load_file(out / "generator.safetensors").keys() == load_file(chosen.artifact).keys()
    with pytest.raises(HetganError, match=r"no prune ratio runs within --target-ms 1, .* prune-0.750, takes 2 ms"):
        search(teacher, tmp_path / "fast", 1.0, measure=measure, score=score, **kw)
    assert not (tmp_path / "fast" / "candidates").exists()  # said before anything is distilled
    scores["0.750"] = 1.5  # fast enough, but past the quality bound: the tables are written, then the error
    with pytest.raises(HetganError, match=r"no candidate meets 3 ms per call .* the best, prune-0.750, scores 1.5"):
        search(teacher, out, 3.0, measure=measure, score=score, **kw)  # resumes the candidate, measures again
    assert json.loads((out / "search.json").read_text())["chosen"] is None
    with pytest.raises(HetganError, match=r"teacher already runs in 8 ms per call .* --search-anyway"):
        search(teacher, tmp_path / "met", 8.0, measure=measure, score=score, **kw)
    assert not (tmp_path / "met" / "candidates").exists()  # said before any student is distilled
    scores["0.750"] = 1.05
    chosen = search(teacher, tmp_path / "met", 8.0, measure=measure, score=score, search_anyway=True, **kw)
    assert chosen.name == "prune-0.750"


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.slow
def test_the_search_times_a_generator_on_its_backend(tmp_path, teacher, backend):
    from hetgan.compression.search import measure_ms

    pytest.importorskip("onnxruntime")
    ms = measure_ms(teacher / "generator.safetensors", backend, 4, 0.2, tmp_path)
    assert 0 < ms < 1000
    exported = [p.name for p in tmp_path.glob("*/*.onnx")]  # in a folder of its own under the work folder
    assert exported == (["teacher.onnx"] if backend == "onnxruntime" else [])


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.slow
def test_the_search_times_candidates_that_share_an_artifact_name(teacher, tmp_path, backend):
    """Every candidate's artifact is called student/generator.safetensors: each is exported and
    timed on the runtime in a folder of its own (the second once failed: the first's export was
    there, and exports no longer replace a file unasked)."""
    from hetgan.compression.search import measure_ms

    artifacts = []
    for name in ("prune-0.500", "prune-0.750"):
        (tmp_path / name / "student").mkdir(parents=True)
        artifacts.append(shutil.copy(teacher / "generator.safetensors", tmp_path / name / "student"))
    (tmp_path / "work").mkdir()
    times = [measure_ms(Path(a), backend, 1, 0.2, tmp_path / "work") for a in artifacts]
    assert all(0 < t < 1000 for t in times)  # ms per batch-1 call of a tiny generator
    assert len(list((tmp_path / "work").iterdir())) == 2


@pytest.mark.slow
def test_compress_distils_until_the_student_is_within_the_bound(teacher, tmp_path, monkeypatch):
    """`hetgan.compress(prune=...)` scores teacher and student and distils --kimg at a time until
    the student is within --max-increase of the teacher (the scores here are stand-ins); a budget
    that runs out first is said; without a feature network the quality is said to be unmeasured."""
    import hetgan
    from hetgan.compression import compress as module

    scores = iter([100.0, 150.0, 120.0, 105.0])  # the teacher, then the student after each step
    monkeypatch.setattr(module, "fid_score", lambda artifact, n: next(scores))
    kw = {"prune": 0.5, "kimg": 0.04, "weights": PIXEL_ONLY, "progress": False}
    student = hetgan.compress(teacher, tmp_path / "c", **kw)
    q = student.quality
    assert (q["kimg"], q["student"], q["within"]) == (pytest.approx(0.12), 105.0, True)
    assert "+5.0%" in student.summary() and "within the bound of 10%" in student.summary()
    assert json.loads((tmp_path / "c" / "compress.json").read_text())["quality"]["kimg"] == pytest.approx(0.12)
    steps = [json.loads(line) for line in (student.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1]["kimg"] == pytest.approx(0.12)  # three steps of 0.04, each continuing the last

    scores = iter([100.0, 150.0])
    student = hetgan.compress(teacher, tmp_path / "b", budget_minutes=0, **kw)
    assert student.quality["within"] is False and "the 0-minute budget ran out" in student.summary()

    monkeypatch.undo()  # the real FID: this npz data has no feature network
    student = hetgan.compress(teacher, tmp_path / "u", **kw)
    assert student.quality["measured"] is False and "quality: not measured" in student.summary()
