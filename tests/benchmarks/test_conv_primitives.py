import pytest
import torch

from hetgan.config import apply_overrides
from hetgan.models import build_models
from hetgan.presets import get_preset
from tests.conftest import benchmark_module


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch build has no oneDNN")
@pytest.mark.slow
def test_conv_primitives_benchmark_sees_every_forward_convolution():
    """benchmarks/conv_primitives.py, tiny: the forward convolutions oneDNN reports for one step
    add up to G's forward once and D's three times (real, fake, fake again in the G step), as
    torch's FLOP counter counts them; all three propagations are there."""
    from torch.utils.flop_counter import FlopCounterMode

    conv_primitives = benchmark_module("conv_primitives")
    times = conv_primitives.measure(["--batch", "4", "--width", "8", "--steps", "2"], steps=2)
    assert {p for kind, _, p, _ in times if kind == "convolution"} == {
        "forward_training",
        "backward_data",
        "backward_weights",
    }
    forward = sum(
        calls * conv_primitives.gflop(kind, shape) * 1e9
        for (kind, _, prop, shape), (calls, _) in times.items()
        if prop == "forward_training" and kind.endswith("convolution")
    )
    cfg = apply_overrides(get_preset("dcgan_textbook"), ["model.width=8", "train.batch_size=4"])
    G, D = build_models(cfg)
    with FlopCounterMode(display=False) as g_count:
        fake = G(torch.randn(4, cfg.model.z_dim))
    with FlopCounterMode(display=False) as d_count:
        D(fake)
    assert forward == pytest.approx(g_count.get_total_flops() + 3 * d_count.get_total_flops())
