"""Self-conditioned GANs (data.clusters): k-means labels for unlabelled images and mixtures, the
run's config, the labelled batches, and G's draws over the clusters' shares."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hetgan.artifact import load_torch_generator
from hetgan.config import TrainConfig
from hetgan.data import load_data
from hetgan.data.clusters import image_features, kmeans, self_conditioned
from hetgan.deploy.export import export
from hetgan.deploy.load import load_generator
from hetgan.errors import ConfigError, DataError
from hetgan.eval.score import Evaluator
from hetgan.generator import classes_in_turn
from hetgan.training.loop import train
from hetgan.training.trainer import Trainer
from tests.conftest import tiny_config

LEVELS = (0, 120, 240)  # the pixel value of each hidden group


@pytest.fixture
def grouped_npz(tmp_path):
    """90 unlabelled images in three groups of unequal size (50, 30, 10): group g is the level
    LEVELS[g] everywhere, with a little noise, so the groups are the only structure there is."""
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1, 2], [50, 30, 10])
    images = np.array(LEVELS)[groups][:, None, None] + rng.integers(-5, 6, (90, 32, 32))
    path = tmp_path / "groups.npz"
    np.savez(path, images=images.clip(0, 255).astype(np.uint8), groups=groups)  # `groups` is not read
    return path, groups


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two labellings group the items alike (up to the names of the groups)."""
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_kmeans_finds_separate_blobs_and_uses_every_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]], dtype=torch.float64)
    truth = torch.arange(400) % 4
    x = centres[truth] + torch.randn(400, 2, generator=g, dtype=torch.float64) * 0.3
    found, labels = kmeans(x, 4, seed=0)
    assert same_partition(labels.numpy(), truth.numpy())
    assert torch.cdist(found, centres).min(1).values.max() < 0.2  # each centre on its blob's mean
    again, labels_again = kmeans(x, 4, seed=0)
    assert torch.equal(found, again) and torch.equal(labels, labels_again)  # a function of (x, k, seed)
    duplicated = torch.tensor([[0.0], [0.0], [0.0], [1.0], [1.0], [5.0]], dtype=torch.float64)
    _, labels = kmeans(duplicated, 3, seed=1)
    assert sorted(torch.bincount(labels).tolist()) == [1, 2, 3]  # no cluster left empty


def test_images_cluster_by_what_tells_them_apart(grouped_npz):
    path, groups = grouped_npz
    data = load_data(tiny_config(f"npz:{path}").data)
    assert image_features(data.images).shape == (90, 64)
    clustered = self_conditioned(data, 3, seed=0)
    assert same_partition(clustered.labels, groups) and clustered.class_names == ["c0", "c1", "c2"]
    assert clustered.images is data.images  # the same images, labelled
    with pytest.raises(DataError, match="data.clusters=91 needs at least 91 images, and there are 90"):
        self_conditioned(data, 91, seed=0)


def test_a_self_conditioned_run_is_conditional_on_its_clusters(grouped_npz):
    path, groups = grouped_npz
    cfg = tiny_config(f"npz:{path}")
    cfg.data.clusters = 3
    trainer = Trainer(cfg)
    model, data = trainer.cfg.model, trainer.cfg.data
    assert model.conditional and model.n_classes == 3 and data.class_names == ["c0", "c1", "c2"]
    assert np.allclose(sorted(data.class_weights), [10 / 90, 30 / 90, 50 / 90], atol=1e-6)  # rounded to 6 places
    for _ in range(4):  # each real batch comes with its images' clusters
        real, y = trainer.sampler.next(8)
        level = ((real[:, 0, 0, 0] + 1) * 127.5).round().numpy()
        group = np.abs(level[:, None] - np.array(LEVELS)).argmin(1)
        assert same_partition(np.concatenate([y.numpy(), trainer.data.labels]), np.concatenate([group, groups]))
    assert trainer.G.n_classes == trainer.D.n_classes == 3


def test_clusters_refuse_what_a_conditional_model_cannot_do():
    cfg = TrainConfig()
    cfg.data.clusters, cfg.loss.pack = 10, 2
    with pytest.raises(ConfigError, match="loss.pack must be 1 with model.conditional=true or data.clusters"):
        cfg.validate()
    cfg.data.clusters, cfg.loss.pack = -1, 1
    with pytest.raises(ConfigError, match=r"data.clusters must be >= 0 \(0 = off\) \(got -1\)"):
        cfg.validate()


def test_mixture_points_are_labelled_by_their_nearest_centre():
    cfg = tiny_config("ring8", "mlp")
    cfg.data.clusters = 8
    trainer = Trainer(cfg)
    centres = torch.from_numpy(trainer.data.centres)
    modes = torch.from_numpy(trainer.data.modes).double()
    assert torch.cdist(centres, modes).min(1).values.max() < 0.01  # one centre on each of the 8 modes
    assert np.allclose(trainer.cfg.data.class_weights, 1 / 8, atol=0.01)  # 20,000 points: +-3 sigma
    points, y = trainer.sampler.next(64)
    assert torch.equal(y, torch.cdist(points.double(), centres).argmin(1))


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.01, 0.98, 0.01], [0.25] * 4])
def test_unlabelled_draws_follow_the_cluster_shares_in_every_prefix(weights):
    """The golden-ratio sequence's discrepancy is O(log n / n), so each class's count in the first
    n draws stays within a few of n times its share, for every n (here within 3 up to 2000)."""
    y = classes_in_turn(2000, len(weights), weights)
    counts = torch.nn.functional.one_hot(y, len(weights)).cumsum(0).double()  # [n, K]
    expected = torch.arange(1, 2001, dtype=torch.float64)[:, None] * torch.tensor(weights, dtype=torch.float64)
    assert (counts - expected).abs().max() <= 3
    assert torch.equal(classes_in_turn(7, 3), torch.tensor([0, 1, 2, 0, 1, 2, 0]))  # no weights: in turn


def test_a_self_conditioned_generator_is_scored_without_per_class_metrics():
    """Its classes are clusters, not the data's classes: per-class accuracy and FID would compare
    cluster c's samples with the real images of class c."""
    cfg = TrainConfig()
    cfg.data.clusters = 20
    cfg.model.conditional, cfg.model.n_classes = True, 20
    assert "per_class" not in Evaluator(cfg).metrics
    cfg.data.clusters = 0
    cfg.model.n_classes = 10
    assert "per_class" in Evaluator(cfg).metrics


@pytest.mark.slow
def test_a_self_conditioned_run_resumes_bit_for_bit_and_exports_its_shares(grouped_npz, tmp_path):
    path, _ = grouped_npz
    cfg = tiny_config(f"npz:{path}", kimg=0.08)
    cfg.data.clusters = 3
    whole = train(cfg, tmp_path / "whole", progress=False).run_dir
    half = train(cfg, tmp_path / "half", progress=False, overrides=["train.kimg=0.04"]).run_dir
    train(resume=half, overrides=["train.kimg=0.08"], progress=False)  # clusters derived again, the same
    a, b = load_torch_generator(whole), load_torch_generator(half)
    assert torch.equal(a.sample(6, seed=1), b.sample(6, seed=1))
    grid = Image.open(whole / "samples" / "final.png")
    assert grid.size[0] == grid.size[1]  # a square grid of the clusters as G draws them, not a row per cluster
    counts = torch.bincount(a.labels(900), minlength=3)  # unlabelled draws over the clusters' shares
    assert (counts - 900 * torch.tensor(a.config.data.class_weights)).abs().max() <= 3
    export(a, "onnx", tmp_path / "g.onnx")
    R = load_generator(tmp_path / "g.onnx")  # the shares travel with the exported model
    assert R.class_names == ["c0", "c1", "c2"] and torch.equal(R.labels(90), a.labels(90))
    assert (R.sample(8, seed=2) - a.sample(8, seed=2)).abs().max() < 1e-4
