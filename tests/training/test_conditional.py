"""Class-conditional GANs (model.conditional): the networks, labels from the data, training,
labelled sampling (CLI and Python), per-class evaluation, export, serving and compression."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from hetgan.artifact import TorchGenerator, load_torch_generator, save_generator
from hetgan.cli import main
from hetgan.config import TrainConfig
from hetgan.data import load_data, with_classes
from hetgan.deploy.load import load_generator
from hetgan.errors import ConfigError, DataError, HetganError
from hetgan.eval.evalnet import held_out_split
from hetgan.eval.score import CAS_TEST_PER_CLASS, Evaluator
from hetgan.generator import SeededGenerator
from hetgan.models import build_models
from hetgan.training.loop import train
from hetgan.training.trainer import Trainer
from tests.conftest import tiny_config
from tests.serving.server_process import server


@pytest.fixture
def labelled_npz(tmp_path):
    """120 images whose class is written in their pixels (class k: value 20 k everywhere), 3 classes."""
    labels = np.arange(120) % 3
    images = np.repeat((labels * 20).astype(np.uint8)[:, None, None], 32, 1).repeat(32, 2)
    path = tmp_path / "classes.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["cat", "dog", "eel"]))
    return path


def conditional(spec: str, arch: str = "dcgan", **loop) -> TrainConfig:
    cfg = tiny_config(spec, arch, **loop)
    cfg.model.conditional = True
    return cfg.validate()


def resolved(cfg: TrainConfig) -> TrainConfig:
    return with_classes(cfg, load_data(cfg.data))


@pytest.mark.parametrize(
    ("arch", "resolution"), [("dcgan", 32), ("dcgan", 64), ("resnet", 32), ("mlp", 28), ("maxout", 28)]
)
def test_every_family_conditions_g_and_d_on_the_class(arch, resolution, labelled_npz):
    torch.manual_seed(0)  # the draws below do not depend on which tests ran before
    cfg = conditional(f"npz:{labelled_npz}", arch)
    cfg.data.resolution = resolution
    if arch == "maxout":  # at width 4 its few ReLU units can all be dead in eval mode, for any class
        cfg.model.width = 16
    G, D = build_models(resolved(cfg))
    for net in (G, D):  # G's class embeddings start neutral (plain BatchNorm): make them differ
        for name, p in net.named_parameters():
            if "gamma" in name or "beta" in name or "embed" in name:
                torch.nn.init.normal_(p, 1.0 if "gamma" in name else 0.0, 0.5)
    z, y = torch.randn(6, cfg.model.z_dim), torch.tensor([0, 1, 2, 0, 1, 2])
    G.train()
    img = G(z, y)
    assert img.shape == (6, 1, resolution, resolution) and torch.isfinite(img).all()
    logits = D(img, y)
    assert logits.shape == (6,)
    logits.sum().backward()  # gradients reach every parameter, the class embeddings included
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in G.parameters())
    G.eval()
    with torch.no_grad():
        same_z = z[:1].repeat(3, 1)
        a, b, c = G(same_z, torch.tensor([0, 1, 2]))
        assert not torch.equal(a, b) and not torch.equal(b, c)  # the class changes the sample
        assert not torch.equal(D(img[:1].repeat(2, 1, 1, 1), torch.tensor([0, 1])).diff(), torch.zeros(1))
    with pytest.raises(ValueError, match="pass the labels"):
        G(z)


def test_unconditional_networks_keep_their_weights_and_refuse_labels(tiny):
    G, D = build_models(tiny)
    assert "net.1.weight" in G.state_dict() and not any("gamma" in k for k in G.state_dict())
    with pytest.raises(ValueError, match="takes no labels"):
        D(torch.zeros(2, 1, 32, 32), torch.zeros(2, dtype=torch.int64))


def test_classes_come_from_the_data_and_are_checked(labelled_npz, tmp_path):
    cfg = resolved(conditional(f"npz:{labelled_npz}"))
    assert cfg.model.n_classes == 3 and cfg.data.class_names == ["cat", "dog", "eel"]
    unlabelled = tmp_path / "plain.npz"
    np.savez(unlabelled, images=np.zeros((8, 32, 32), np.uint8))
    with pytest.raises(DataError, match="needs labelled data"):
        resolved(conditional(f"npz:{unlabelled}"))
    too_few = conditional(f"npz:{labelled_npz}")
    too_few.model.n_classes, too_few.data.class_names = 2, ["cat", "dog"]
    with pytest.raises(DataError, match="labels run to class index 2"):
        resolved(too_few)
    stray = TrainConfig()
    stray.model.n_classes = 3
    with pytest.raises(ConfigError, match="n_classes applies to conditional models only"):
        stray.validate()
    pack = conditional(f"npz:{labelled_npz}")
    pack.loss.pack = 2
    with pytest.raises(ConfigError, match="loss.pack must be 1 with model.conditional"):
        pack.validate()


def test_real_batches_come_with_their_own_labels(labelled_npz):
    trainer = Trainer(conditional(f"npz:{labelled_npz}"))
    for _ in range(3):
        real, y = trainer.sampler.next(8)
        level = ((real[:, 0, 0, 0] + 1) * 127.5).round()  # the class is written in the pixels
        assert torch.equal(level, (y * 20).float())


@pytest.mark.slow
def test_a_conditional_run_resumes_bit_for_bit(labelled_npz, tmp_path):
    cfg = conditional(f"npz:{labelled_npz}", kimg=0.08)
    cfg.loss.ada_target, cfg.loss.ada_interval, cfg.loss.ada_kimg = 0.1, 1, 0.1  # ADA's p is training state too
    whole = train(cfg, tmp_path / "whole", progress=False).run_dir
    half = train(cfg, tmp_path / "half", progress=False, overrides=["train.kimg=0.04"]).run_dir
    train(resume=half, overrides=["train.kimg=0.08"], progress=False)
    a, b = load_torch_generator(whole), load_torch_generator(half)
    assert a.n_classes == 3 and torch.equal(a.sample(6, seed=1), b.sample(6, seed=1))


@pytest.fixture
def cgan(labelled_npz, tmp_path):
    """A conditional artifact with distinct class embeddings (random weights)."""
    cfg = resolved(conditional(f"npz:{labelled_npz}"))
    G, _ = build_models(cfg)
    for name, p in G.named_parameters():
        if "gamma" in name or "beta" in name:
            torch.nn.init.normal_(p, 1.0 if "gamma" in name else 0.0, 0.5)
    return save_generator(G, cfg, tmp_path / "generator.safetensors")


def test_sample_by_class_name_or_index(cgan):
    G = load_generator(cgan)
    assert G.n_classes == 3 and G.class_names == ["cat", "dog", "eel"]
    assert torch.equal(G.sample(4, seed=2, labels="dog"), G.sample(4, seed=2, labels=1))
    assert not torch.equal(G.sample(4, seed=2, labels="dog"), G.sample(4, seed=2, labels="eel"))
    mixed = G.sample(3, seed=2, labels=["cat", 1, "eel"])
    assert torch.equal(mixed, G.sample(3, seed=2))  # the default: the classes in turn
    with pytest.raises(HetganError, match="unknown class 'owl'.*named cat, dog, eel"):
        G.sample(2, labels="owl")
    with pytest.raises(HetganError, match="2 labels for 3 samples"):
        G.sample(3, labels=[0, 1])


def test_an_unconditional_generator_refuses_labels(tiny, tmp_path, capsys):
    G, _ = build_models(tiny)
    path = save_generator(G, tiny, tmp_path / "g.safetensors")
    with pytest.raises(HetganError, match="unconditional"):
        load_generator(path).sample(2, labels=0)
    assert main(["sample", "--artifact", str(path), "--per-class", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "need a conditional generator" in capsys.readouterr().err


@pytest.mark.slow
def test_per_class_samples_as_a_folder_that_reads_back_with_its_labels(cgan, tmp_path, capsys):
    out = tmp_path / "synthetic"
    assert main(["sample", "--artifact", str(cgan), "--per-class", "3", "--out", f"{out}/"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cat", "dog", "eel"]
    cfg = TrainConfig()
    cfg.data.spec = f"folder:{out}"
    data = load_data(cfg.data)
    assert data.class_names == ["cat", "dog", "eel"] and np.bincount(data.labels).tolist() == [3, 3, 3]
    G = load_generator(cgan)
    want = (G.sample(9, seed=0, labels=np.repeat([0, 1, 2], 3).tolist()) + 1) * 127.5
    assert np.abs(data.images[3:6].astype(float) - want[3:6].round().numpy()).max() <= 1  # the dogs
    capsys.readouterr()
    assert main(["sample", "--artifact", str(cgan), "--per-class", "3", "--out", f"{out}/"]) == 2
    assert "already holds 9 samples" in capsys.readouterr().err
    assert main(["sample", "--artifact", str(cgan), "--class", "eel", "--n", "2", "--out", f"{out}/", "--append"]) == 0
    assert sorted(p.name for p in (out / "eel").iterdir())[-1] == "00004.png"


@pytest.mark.slow
def test_npz_and_grid_carry_the_classes(cgan, tmp_path):
    npz = tmp_path / "s.npz"
    classes = ["--class", "dog", "--class", "0"]
    assert main(["sample", "--artifact", str(cgan), *classes, "--n", "4", "--out", str(npz)]) == 0
    with np.load(npz) as f:
        assert f["labels"].tolist() == [1, 0, 1, 0] and f["class_names"].tolist() == ["cat", "dog", "eel"]
    grid = tmp_path / "g.png"
    assert main(["sample", "--artifact", str(cgan), "--per-class", "5", "--out", str(grid)]) == 0
    from PIL import Image

    assert Image.open(grid).size == (5 * 34 + 2, 3 * 34 + 2)  # a row per class


class ClassDrawer(SeededGenerator):
    """A stand-in 'generator' that returns real digits of the class asked for (or of another),
    never one of the digits CAS tests its classifier on: a classifier trained on these "samples"
    has not seen its test images (the 400 others of each class, in turn)."""

    def __init__(self, config: TrainConfig, data, wrong: bool = False) -> None:
        self.config, self.z_dim, self.shape = config, config.model.z_dim, (1, 32, 32)
        self.data, self.wrong, self.drawn = data, wrong, 0
        _, test = held_out_split(data.labels, CAS_TEST_PER_CLASS, seed=0)  # as Evaluator.cas holds out
        unseen = np.setdiff1d(np.arange(len(data.labels)), test)
        self.pool = {k: unseen[data.labels[unseen] == k] for k in range(10)}

    def _generate(self, z, y):
        y = (y + 1) % 10 if self.wrong else y
        picks = [self.pool[k][(self.drawn + i) % len(self.pool[k])] for i, k in enumerate(y.tolist())]
        self.drawn += len(y)
        return torch.from_numpy(self.data.images[picks]).float().div(127.5).sub(1)


@pytest.mark.slow
def test_class_accuracy_and_per_class_fid_tell_right_classes_from_wrong():
    cfg = TrainConfig()
    cfg.model.conditional = True
    cfg = resolved(cfg)
    assert "per_class" in Evaluator(cfg).metrics  # a conditional G's default
    evaluator = Evaluator(cfg, metrics=("per_class",))  # not KID, precision...: tests/eval checks those
    right = evaluator(ClassDrawer(cfg, evaluator.data), 1300)  # 130 a class: per-class FID in 128-d needs 129
    wrong = evaluator(ClassDrawer(cfg, evaluator.data, wrong=True), 1300)
    assert right["class_accuracy"] > 0.95 and wrong["class_accuracy"] < 0.05
    assert set(right["fid_per_class"]) == set("0123456789")
    assert right["fid_class_mean"] * 5 < wrong["fid_class_mean"]


@pytest.mark.slow
def test_per_class_fid_needs_a_full_rank_covariance_and_says_so(caplog):
    """Per-class FID from 10 samples per class in a 128-d feature space says nothing: below 129 a
    class the FID is left out, and a warning says how many samples are needed."""
    cfg = TrainConfig()
    cfg.model.conditional = True
    cfg = resolved(cfg)
    evaluator = Evaluator(cfg, metrics=("per_class",))
    with caplog.at_level("WARNING", logger="hetgan"):
        result = evaluator(ClassDrawer(cfg, evaluator.data), 100)
    assert result["fid_per_class"] == {} and "fid_class_mean" not in result
    assert "needs 129 samples of each class in this 128-d feature space" in caplog.text
    assert "got 10 generated" in caplog.text and "pass --n 1290 or more" in caplog.text


@pytest.mark.slow
def test_cas_trains_on_samples_and_tests_on_real_images():
    cfg = TrainConfig()
    cfg.model.conditional = True
    cfg = resolved(cfg)
    evaluator = Evaluator(cfg, metrics=("cas",))
    # 500 samples (50 a class) are enough to tell: right read 0.95, wrong 0.01 (2026-12-03)
    right = evaluator(ClassDrawer(cfg, evaluator.data), 500)["cas"]
    wrong = evaluator(ClassDrawer(cfg, evaluator.data, wrong=True), 500)["cas"]
    assert right > 0.8 and wrong < 0.1  # labels shifted by one: the classifier learns the shift


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.slow
def test_export_takes_the_labels_as_a_second_input(cgan, tmp_path, fmt):
    from hetgan.deploy.export import export

    G = load_torch_generator(cgan)
    out = tmp_path / ("g.onnx" if fmt == "onnx" else "g.xml")
    export(G, fmt, out)
    R = load_generator(out)
    assert R.class_names == ["cat", "dog", "eel"]
    for label in ("cat", "eel"):
        assert (R.sample(5, seed=3, labels=label) - G.sample(5, seed=3, labels=label)).abs().max() < 1e-4


@pytest.mark.slow
def test_served_with_a_class_per_request(cgan):
    G = load_generator(cgan)
    with server(cgan) as (client, _):
        assert client.get("/v1/model").json()["classes"] == ["cat", "dog", "eel"]
        r = client.post("/v1/generate", json={"n": 4, "seed": 5, "class": "dog", "format": "npz"})
        assert r.status_code == 200, r.text
        got = np.load(io.BytesIO(r.content))["images"]
        want = ((G.sample(4, seed=5, labels="dog") + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
        assert np.abs(got.astype(float) - want).max() <= 1
        bad = client.post("/v1/generate", json={"n": 2, "class": "owl"})
        assert bad.status_code == 422 and "unknown class 'owl'" in bad.json()["error"]
        walk = client.post("/v1/interpolate", json={"seed_a": 0, "seed_b": 1, "frames": 3, "class": 2})
        assert walk.status_code == 200 and walk.headers["content-type"] == "image/png"
        assert client.get("/healthz").status_code == 200  # still serving


@pytest.mark.slow
def test_compress_prunes_and_distils_a_conditional_teacher(labelled_npz, tmp_path):
    from hetgan.compression.student import prune_and_distil
    from hetgan.config import DistillConfig

    teacher = train(conditional(f"npz:{labelled_npz}", kimg=0.04), tmp_path / "teacher", progress=False).run_dir
    weights = DistillConfig(feature_weight=0)
    result = prune_and_distil(teacher, tmp_path / "small", prune=0.5, kimg=0.02, weights=weights, progress=False)
    student = load_generator(result.run_dir)
    assert student.n_classes == 3 and student.config.model.g_widths == result.widths
    assert result.macs < result.teacher_macs
    assert student.sample(3, labels="eel").shape == (3, 1, 32, 32)


@pytest.mark.slow
def test_the_conditional_preset_trains_from_the_cli(tmp_path):
    run = tmp_path / "run"
    args = ["train", "--preset", "cdcgan_mnist", "--kimg", "0.26", "--out", str(run), "--no-progress"]
    assert main([*args, "--set", "model.width=8"]) == 0
    G = load_generator(run)
    assert G.n_classes == 10 and G.class_names == [str(i) for i in range(10)]
    assert "10 classes, 32x32 grayscale (stored 28x28, centre-cropped" in (run / "log.txt").read_text()
    assert isinstance(G, TorchGenerator)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.slow
def test_bench_deploy_profiles_and_probes_a_conditional_model(cgan, tmp_path, fmt):
    """bench --deploy's layer profiler and memory probe feed a conditional model its classes too
    (they fed only z: OpenVINO's profiler failed and the probe silently gave no figure)."""
    from hetgan.benchmarking.inference import Row, layer_kernels, peak_memory_mib
    from hetgan.deploy.export import export

    out = tmp_path / ("g.onnx" if fmt == "onnx" else "g.xml")
    export(load_torch_generator(cgan), fmt, out)
    R = load_generator(out)
    kernels = layer_kernels(R, batch=4)
    assert kernels and all(k["ms"] >= 0 and k["op"] for k in kernels)
    for G, path in ((R, out), (load_generator(cgan), cgan)):
        peak = peak_memory_mib(Row(fmt, G, [path]), threads=1, batch=4)
        assert peak is not None and peak > 10, path  # a process with numpy and a runtime (or torch) loaded
