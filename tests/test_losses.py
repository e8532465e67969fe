import math

import pytest
import torch
from torch import nn

from hetgan.config import LossConfig
from hetgan.losses import LOSSES, build_loss, pack


class Linear1(nn.Module):
    """D(x) = w . x: simple enough to check losses and penalties by hand."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((features,), 0.5))

    def forward(self, x):
        return x.flatten(1) @ self.w


def loss(name, **kw):
    return build_loss(LossConfig(name=name, **kw), torch.Generator().manual_seed(0))


def test_bce_matches_reference_and_is_stable_for_huge_logits():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])
    ref_d = -(torch.log(torch.sigmoid(real)).mean() + torch.log(1 - torch.sigmoid(fake)).mean())
    assert loss("bce").d_objective(real, fake).item() == pytest.approx(ref_d.item(), rel=1e-6)
    huge = torch.tensor([1e4])
    assert math.isfinite(loss("bce").d_objective(huge, -huge).item())
    assert loss("bce").g_objective(torch.tensor([-1e4])).item() == pytest.approx(1e4)


def test_hinge_values():
    h = loss("hinge")
    assert h.d_objective(torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.0])).item() == pytest.approx(1.0)
    assert h.g_objective(torch.tensor([1.0, 3.0])).item() == pytest.approx(-2.0)


def test_wgan_gp_penalty_by_hand():
    # For linear D the gradient is w everywhere: penalty = (||w|| - 1)^2.
    D = Linear1(4)  # ||w|| = 1 -> penalty 0
    assert loss("wgan-gp").gradient_penalty(D, torch.randn(6, 4), torch.randn(6, 4)).item() == pytest.approx(0)
    with torch.no_grad():
        D.w.fill_(1.0)  # ||w|| = 2 -> penalty 1
    assert loss("wgan-gp").gradient_penalty(D, torch.randn(6, 4), torch.randn(6, 4)).item() == pytest.approx(1)


def test_r1_penalty_by_hand():
    D = Linear1(3)  # grad = w = 0.5 each -> ||grad||^2 = 0.75
    total, stats = loss("bce", r1_gamma=2.0).d_loss(D, torch.randn(5, 3), torch.randn(5, 3))
    assert stats["r1"].item() == pytest.approx(0.75)
    base, _ = loss("bce").d_loss(D, torch.randn(5, 3), torch.randn(5, 3))
    assert total.requires_grad and base.requires_grad


def test_pack_groups_consecutive_samples():
    x = torch.arange(8.0).view(4, 2)  # [B=4, F=2]
    packed = pack(x, 2)
    assert packed.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
    img = torch.randn(6, 3, 5, 5)
    assert pack(img, 3).shape == (2, 9, 5, 5)
    assert torch.equal(pack(img, 3)[1, 3:6], img[4])


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_gives_gradients_to_both_players(name):
    torch.manual_seed(0)
    G, D = nn.Linear(2, 4), Linear1(4)
    obj = loss(name)
    fake = G(torch.randn(8, 2))
    d_loss, _ = obj.d_loss(D, torch.randn(8, 4), fake)
    d_loss.backward()
    assert D.w.grad.abs().sum() > 0 and G.weight.grad is None  # D step must not reach G
    g_loss, _ = obj.g_loss(D, fake)
    g_loss.backward()
    assert G.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "settings",
    [{"name": name} for name in LOSSES.names()]
    + [{"name": "bce", "r1_gamma": 1.0, "augment": "translation,cutout"}, {"name": "wgan-gp", "pack": 2}],
    ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()),
)
def test_losses_run_on_d_device_while_their_generator_is_on_g_device(settings):
    """The loss's generator sits with G's input (G on a GPU, D on the CPU, or the reverse), its
    random draws are used where D is. The meta device stands in for D's device here."""
    cfg = LossConfig()
    for key, value in settings.items():
        setattr(cfg, key, value)
    obj = build_loss(cfg, torch.Generator().manual_seed(0))
    D = nn.Sequential(nn.Flatten(), nn.Linear(cfg.pack * 12, 1)).to("meta")
    real, fake = (torch.randn(4, 3, 2, 2, device="meta") for _ in range(2))
    d_loss, stats = obj.d_loss(D, real, fake)
    g_loss, _ = obj.g_loss(D, fake)
    assert {t.device.type for t in (d_loss, g_loss, *stats.values())} == {"meta"}
