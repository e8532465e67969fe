"""Stacked MNIST (1000 modes): the data spec, the per-channel digit network and the protocol's
metrics (modes covered, KL to uniform) in `hetgan eval`."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hetgan.config import DataConfig, TrainConfig
from hetgan.data import load_data
from hetgan.errors import DataError
from hetgan.eval import metrics as M
from hetgan.eval.evalnet import StackedDigits, load_evalnet
from hetgan.eval.score import STACKED_N, Evaluator, default_eval_n
from hetgan.generator import SeededGenerator
from hetgan.presets import get_preset


@pytest.fixture(scope="module")
def stacked():
    return load_data(DataConfig(spec="stacked_mnist", channels=3))


class Replay(SeededGenerator):
    """A stand-in generator that returns the data's own images in order (or always the first)."""

    def __init__(self, config: TrainConfig, images: np.ndarray, collapsed: bool = False) -> None:
        self.config, self.z_dim, self.shape = config, config.model.z_dim, images.shape[1:]
        self.images, self.collapsed, self.drawn = images, collapsed, 0

    def _generate(self, z, y):
        index = np.zeros(len(z), dtype=int) if self.collapsed else np.arange(self.drawn, self.drawn + len(z))
        self.drawn += len(z)
        return torch.from_numpy(self.images[index % len(self.images)]).float().div(127.5).sub(1)


@pytest.mark.slow
def test_stacked_mnist_has_a_digit_in_each_channel_and_its_mode_as_label(stacked):
    assert stacked.images.shape == (50_000, 3, 32, 32) and len(stacked.class_names) == 1000
    assert np.bincount(stacked.labels, minlength=1000).min() > 0  # every mode is in the data
    net = StackedDigits(load_evalnet())
    _, probs = net.embed(torch.from_numpy(stacked.images[:300]).float().div(127.5).sub(1))
    assert np.allclose(probs.sum(1), 1.0)
    # The digit network reads back each channel's digit: the mode of 3 digits at >= 98 % each.
    assert (probs.argmax(1) == stacked.labels[:300]).mean() > 0.94
    with pytest.raises(DataError, match="pass --set data.channels=3"):
        load_data(DataConfig(spec="stacked_mnist", channels=1))


def test_mode_probabilities_are_the_products_of_the_channels_digits():
    torch.manual_seed(0)
    net = StackedDigits(load_evalnet()).eval()
    img = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        logits, feats = net(img)
        per_channel = [net.digits(img[:, c : c + 1])[0].softmax(1) for c in range(3)]
    want = torch.einsum("bi,bj,bk->bijk", *per_channel).flatten(1)
    assert torch.allclose(logits.softmax(1), want, atol=1e-6) and feats.shape == (4, 3 * 128)


@pytest.mark.slow
def test_eval_counts_the_modes_and_their_kl_to_uniform(stacked):
    cfg = get_preset("dcgan_stacked_mnist")
    assert Evaluator(cfg, data=stacked).metrics == ("fid", "classes")  # the protocol's, and FID
    evaluator = Evaluator(cfg, data=stacked, metrics=("classes",))
    real = evaluator(Replay(cfg, stacked.images), 2000)
    # 2000 draws of the (near-uniform) data cover about 1000 (1 - e^-2) = 865 modes; the KL to
    # uniform of 2000 uniform draws over 1000 modes is 0.29 (0.27-0.32 over 200 simulated draws),
    # and the network's misreadings (about 5 % of samples) spread them a little further.
    assert 800 <= real["classes_covered"] <= 1000 and real["kl_to_uniform"] < 0.45
    collapsed = evaluator(Replay(cfg, stacked.images, collapsed=True), 500)
    assert collapsed["classes_covered"] == 1 and collapsed["kl_to_uniform"] == pytest.approx(np.log(1000))
    assert collapsed["warnings"][0].startswith("mode collapse: 100% of the 500 samples")
    assert default_eval_n(Replay(cfg, stacked.images)) == STACKED_N == 26_000


def test_kl_to_uniform_is_the_protocols():
    probs = np.eye(4)[[0, 0, 1, 2]]  # histogram (2, 1, 1, 0) over 4 classes
    p = np.array([0.5, 0.25, 0.25])
    assert M.class_histogram(probs, 4)["kl_to_uniform"] == pytest.approx((p * np.log(p * 4)).sum())
