import copy
import shutil

import pytest
import torch
from safetensors.torch import load_file
from torch.nn.utils.parametrizations import spectral_norm as torch_spectral_norm

from hetgan.cli import main
from hetgan.config import TrainConfig
from hetgan.deploy.load import load_generator
from hetgan.errors import ConfigError
from hetgan.losses import pack
from hetgan.models import MODELS, build_models
from hetgan.models.layers import spectral_norm
from tests.conftest import ROOT


def config_for(arch: str, resolution: int = 32, channels: int = 1, spec: str = "mnist5k", p: int = 1):
    cfg = TrainConfig()
    cfg.model.arch, cfg.model.width, cfg.model.z_dim = arch, 8, 16
    cfg.data.spec, cfg.data.resolution, cfg.data.channels = spec, resolution, channels
    cfg.loss.pack = p
    return cfg


CASES = [
    ("dcgan", 32, 1, "mnist5k"),
    ("dcgan", 64, 3, "mnist5k"),
    ("resnet", 32, 3, "mnist5k"),
    ("mlp", 28, 1, "mnist5k"),
    ("mlp", 28, 1, "ring8"),
    ("maxout", 28, 1, "mnist5k"),
    ("maxout", 28, 1, "grid25"),
]


@pytest.mark.parametrize("arch,res,ch,spec", CASES)
@pytest.mark.parametrize("p", [1, 2])
def test_forward_backward_finite(arch, res, ch, spec, p):
    torch.manual_seed(0)
    G, D = build_models(config_for(arch, res, ch, spec, p))
    x = G(torch.randn(4, 16))
    expected = (4, 2) if spec in ("ring8", "grid25") else (4, ch, res, res)
    assert tuple(x.shape) == expected
    if spec not in ("ring8", "grid25"):
        assert x.min() >= -1 and x.max() <= 1  # tanh range
    logits = D(pack(x, p))
    assert logits.shape == (4 // p,)
    logits.sum().backward()
    for net in (G, D):
        grads = [q.grad for q in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_every_registered_model_is_covered():
    assert {case[0] for case in CASES} == set(MODELS.names())


def test_unsupported_resolution_suggests_fix():
    with pytest.raises(ConfigError, match=r"supports resolutions \[32, 64, 128, 256\].*data.resolution=32"):
        build_models(config_for("dcgan", 28))


def test_conv_model_on_points_suggests_mlp():
    with pytest.raises(ConfigError, match="model.arch=mlp"):
        build_models(config_for("dcgan", spec="grid25"))


def test_mlp_default_width_is_seed_layout():
    cfg = config_for("mlp", 28)
    cfg.model.width, cfg.model.z_dim = 256, 100
    G, D = build_models(cfg)
    g_widths = [m.out_features for m in G.modules() if isinstance(m, torch.nn.Linear)]
    d_widths = [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert g_widths == [256, 512, 1024, 784] and d_widths == [512, 256, 1]


def test_mlp_depths_give_that_many_hidden_layers():
    cfg = config_for("mlp", spec="ring8")
    cfg.model.width, cfg.model.z_dim, cfg.model.g_depth = 32, 2, 5
    G, D = build_models(cfg)
    g_linear = [(m.in_features, m.out_features) for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert g_linear == [(2, 32)] + [(32, 32)] * 4 + [(32, 2)]
    d_widths = [m.out_features for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert d_widths == [64, 32, 1]  # D keeps its layout
    cfg.model.d_depth = 4
    _, D = build_models(cfg)
    d_linear = [(m.in_features, m.out_features) for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert d_linear == [(2, 64), (64, 32), (32, 32), (32, 32), (32, 1)]


@pytest.mark.parametrize("field", ["g_depth", "d_depth"])
def test_depth_on_another_family_is_a_config_error(field):
    cfg = config_for("dcgan")
    setattr(cfg.model, field, 4)
    fix = r"not 'dcgan'; set them to 0 \(--set model.g_depth=0 --set model.d_depth=0\)"
    with pytest.raises(ConfigError, match=fix):
        cfg.validate()


def test_maxout_width_is_pacgan_layout():
    cfg = config_for("maxout", spec="ring8", p=2)
    cfg.model.width, cfg.model.z_dim = 400, 2
    G, D = build_models(cfg)
    g_linear = [(m.in_features, m.out_features) for m in G.modules() if isinstance(m, torch.nn.Linear)]
    assert g_linear == [(2, 400), (400, 400), (400, 400), (400, 400), (400, 2)]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in G.modules()) == 4
    d_linear = [(m.in_features, m.out_features) for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert d_linear == [(4, 1000), (200, 1000), (200, 1000), (200, 1)]  # 200 units x 5 pieces


def test_maxout_unit_is_max_over_its_pieces():
    from hetgan.models.maxout import Maxout

    torch.manual_seed(0)
    unit = Maxout(3, 2, pieces=4)
    x = torch.randn(5, 3)
    pre = unit.linear(x)  # [5, 8]: unit j owns pieces 4j .. 4j+3
    expected = torch.stack([pre[:, :4].max(1).values, pre[:, 4:].max(1).values], dim=1)
    assert torch.equal(unit(x), expected)


def test_resnet_runs_from_before_its_layer_list_resume_exactly(tmp_path):
    """tests/fixtures/resnet_split_parts: a resnet run checkpointed halfway by hetgan at commit
    67608c0, when G kept `linear`, `blocks`, `out` and D `blocks`, `head` apart, and the generator
    of the same run trained without a stop. Resumed now, it must end at the same weights: the
    parameters bit for bit. The BatchNorm running statistics are estimated again by a forward pass
    when the generator is written, and its sums run in another order on a CPU of another vector
    width (the fixture was made with AVX-512; AVX2 CPUs differ by one unit in the last place): within
    float32 round-off, rtol 1e-5 (about 80 units of 2**-23)."""
    fixture = ROOT / "tests" / "fixtures" / "resnet_split_parts"
    old_keys = load_file(fixture / "uninterrupted.safetensors")
    assert {"linear.weight", "blocks.2.conv2.bias", "out.2.weight"} <= set(old_keys)  # the old layout
    run = shutil.copytree(fixture / "run", tmp_path / "run")
    assert main(["train", "--resume", str(run), "--kimg", "0.016", "--no-progress"]) == 0
    resumed = load_generator(run / "generator.safetensors")
    uninterrupted = load_generator(fixture / "uninterrupted.safetensors")
    assert "net.7.weight" in resumed.net.state_dict()
    for (name, a), b in zip(resumed.net.state_dict().items(), uninterrupted.net.state_dict().values(), strict=True):
        if name.endswith(("running_mean", "running_var")):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8, msg=name)
        else:
            assert torch.equal(a, b), name


def sn_pair(make):
    """The same layer twice from one seed: with torch's spectral norm and with hetgan's."""
    torch.manual_seed(0)
    theirs = torch_spectral_norm(make())
    torch.manual_seed(0)
    return theirs, spectral_norm(make())


def judge_twice_then_step(layer, steps: int = 4, compiled: bool = False) -> None:
    """A D phase's pattern: two forwards (real, fake) before one backward, then an Adam step."""
    forward = torch.compile(layer) if compiled else layer
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        real, fake = torch.randn(5, 3, 6, 6, generator=g), torch.randn(5, 3, 6, 6, generator=g)
        loss = forward(real).sum() - forward(fake).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_spectral_norm_computes_torchs_numbers():
    """Weights, power-iteration vectors and state_dict keys equal torch's, to the bit, in
    training and in eval mode."""
    for make in (lambda: torch.nn.Conv2d(3, 8, 1), lambda: torch.nn.Conv2d(3, 4, 3)):
        theirs, ours = sn_pair(make)
        judge_twice_then_step(theirs)
        judge_twice_then_step(ours)
        a, b = theirs.state_dict(), ours.state_dict()
        assert list(a) == list(b) and "parametrizations.weight.0._v" in a
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(theirs.eval().weight, ours.eval().weight)


@pytest.mark.slow
def test_a_generator_without_spectral_norm_runs_without_importing_the_compiler():
    """torch._dynamo takes over a second to import, which `hetgan sample` of a DCGAN never needs:
    hetgan's spectral norm makes its eager power iteration (torch.compiler.disable, which imports
    the compiler) when the first one is built, not when hetgan is imported."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from hetgan.cli import main; from hetgan.config import TrainConfig\n"
        "from hetgan.models import build_models; from hetgan.models.layers import spectral_norm\n"
        "G, D = build_models(TrainConfig()); G.eval()(torch.randn(2, G.z_dim))\n"
        "assert 'torch._dynamo' not in sys.modules, 'imported with hetgan or by a DCGAN'\n"
        "spectral_norm(torch.nn.Linear(3, 2)); assert 'torch._dynamo' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.parametrize("in_place", [False, True])
def test_spectral_norm_compiles_where_torchs_fails(in_place):
    """torch.compile of torch's spectral norm fails when a layer whose weight matrix is taller
    than wide is called twice before backward (in torch 2.13: the buffer v saved for backward is
    modified in place); hetgan's trains, close to its eager numbers. By default the layer is one
    graph (u and v become new tensors); with `in_place` (for CUDA graphs) the power iteration
    runs outside it, one graph break."""
    from torch._dynamo.utils import counters

    theirs, ours = sn_pair(lambda: torch.nn.Conv2d(3, 8, 1))  # weight matrix [8, 3]
    torch._dynamo.reset()
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        judge_twice_then_step(copy.deepcopy(theirs), compiled=True)
    compiled = copy.deepcopy(ours)
    compiled.parametrizations.weight[0].in_place = in_place
    torch._dynamo.reset()
    counters.clear()
    judge_twice_then_step(compiled, compiled=True)
    assert (sum(counters["graph_break"].values()) > 0) == in_place, dict(counters["graph_break"])
    judge_twice_then_step(ours)
    for x, y in zip(compiled.state_dict().values(), ours.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
