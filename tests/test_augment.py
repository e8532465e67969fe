"""Adaptive discriminator augmentation (loss.ada_target), and the conv models at 128 and 256 px."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hetgan.augment import ADA_TRANSFORMS, AdaptiveAugment
from hetgan.config import TrainConfig
from hetgan.data import describe_data, load_data
from hetgan.errors import ConfigError
from hetgan.models import build_models
from hetgan.training.trainer import Trainer
from tests.conftest import tiny_config


def images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_p_zero_leaves_images_as_they_are_and_p_one_changes_them():
    x = images()
    ada = AdaptiveAugment(0.6, 100, 4)
    gen = torch.Generator().manual_seed(1)
    assert torch.equal(ada(x, gen), x)
    ada.p = 1.0
    y = ada(x, gen)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.allclose(y, x)


def test_the_draws_do_not_depend_on_p():
    """The run's random stream advances the same whatever p is, so a resumed run stays exact."""
    a, b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    low, high = AdaptiveAugment(0.6, 100, 4), AdaptiveAugment(0.6, 100, 4)
    high.p = 0.7
    low(images(), a)
    high(images(), b)
    assert torch.equal(torch.rand(3, generator=a), torch.rand(3, generator=b))


def test_every_transform_is_differentiable():
    x = images().requires_grad_(True)
    ada = AdaptiveAugment(0.6, 100, 4)
    ada.p = 1.0
    ada(x, torch.Generator().manual_seed(3)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(ADA_TRANSFORMS) == 6


def test_p_follows_the_overfitting_heuristic():
    ada = AdaptiveAugment(target=0.6, speed_kimg=1.0, interval=2)  # 64 images x 2 phases: p moves 0.128
    sure = torch.full((64,), 3.0)  # D calls every real image real: r_t = 1 > 0.6
    ada.observe(sure)
    assert not ada.adjust(64) and ada.p == 0.0  # only every `interval` D phases
    ada.observe(sure)
    assert ada.adjust(64) and ada.rt == 1.0 and ada.p == pytest.approx(0.128)
    for _ in range(20):
        ada.observe(sure)
        ada.observe(sure)
        ada.adjust(64)
    assert ada.p == 1.0  # clamped
    unsure = torch.tensor([1.0, -1.0] * 32)  # r_t = 0 < 0.6
    ada.observe(unsure)
    ada.observe(unsure)
    ada.adjust(64)
    assert ada.p == pytest.approx(1 - 0.128)


def test_a_run_logs_and_checkpoints_p(tiny):
    tiny.loss.ada_target, tiny.loss.ada_interval, tiny.loss.ada_kimg = 0.01, 1, 0.05
    trainer = Trainer(tiny)
    trainer.loss.ada.p = expected = 0.5
    for _ in range(3):
        record = trainer.step().floats()
        # each D phase (one a step) moves p by 8 images / 50: up when r_t > the target, else down
        expected = min(max(expected + (0.16 if record["ada_rt"] > 0.01 else -0.16), 0), 1)
        assert record["ada_p"] == pytest.approx(expected)
    tensors, meta = trainer.state()
    again = Trainer(tiny)
    again.load_state(tensors, meta)
    assert again.loss.ada.p == trainer.loss.ada.p


def test_ada_settings_are_checked():
    cfg = TrainConfig()
    cfg.loss.ada_target = 1.5
    with pytest.raises(ConfigError, match=r"loss.ada_target must be in \[0, 1\) .*got 1.5"):
        cfg.validate()


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("resolution", [128, 256])
def test_conv_models_at_128_and_256_px(digits_npz, arch, resolution):
    cfg = tiny_config(f"npz:{digits_npz}", arch)
    cfg.data.resolution, cfg.data.channels, cfg.model.width = resolution, 3, 2
    G, D = build_models(cfg.validate())
    img = G(torch.randn(2, cfg.model.z_dim))
    assert img.shape == (2, 3, resolution, resolution)
    logits = D(img)
    assert logits.shape == (2,) and torch.isfinite(logits).all()


def test_the_data_line_says_how_images_were_resized(digits_npz, tmp_path):
    cfg = TrainConfig()
    cfg.data.spec = f"npz:{digits_npz}"
    assert "(stored 28x28, centre-cropped to a square, then resized with Lanczos to 32x32)" in describe_data(
        load_data(cfg.data), cfg.data.spec
    )
    cfg.data.resolution = 28
    assert "stored" not in describe_data(load_data(cfg.data), cfg.data.spec)
    from PIL import Image

    for i in range(3):
        (tmp_path / "pics").mkdir(exist_ok=True)
        Image.fromarray(np.full((48, 48, 3), 40 * i, np.uint8)).save(tmp_path / "pics" / f"{i}.png")
    cfg.data.spec, cfg.data.resolution, cfg.data.channels = f"folder:{tmp_path / 'pics'}", 64, 3
    line = describe_data(load_data(cfg.data), cfg.data.spec)
    assert line.endswith("64x64 colour (stored 48x48, centre-cropped to a square, then resized with Lanczos to 64x64)")
