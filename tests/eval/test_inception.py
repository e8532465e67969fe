import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hetgan.errors import CheckpointError, HetganError
from hetgan.eval.inception import FIDInceptionV3, _avg_pool, load_inception
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised FID InceptionV3 saved as pytorch-fid ships it: a plain state dict."""
    torch.manual_seed(0)
    net = FIDInceptionV3().eval()
    path = tmp_path_factory.mktemp("inception") / "pt_inception.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_layout_matches_published_inception_v3():
    # torchvision's inception_v3 has 27,161,264 parameters with its auxiliary head (3,326,696) and a
    # 1000-way fc (2,049,000); the FID graph has no auxiliary head and a 1008-way fc (2,065,392).
    assert sum(p.numel() for p in FIDInceptionV3().parameters()) == 27_161_264 - 3_326_696 - 2_049_000 + 2_065_392


def test_tensorflow_style_pools():
    ones = torch.ones(1, 1, 5, 5)
    assert torch.equal(_avg_pool(ones), ones)  # padding does not drag border averages down
    net = FIDInceptionV3()
    assert (net.Mixed_7b.pool, net.Mixed_7c.pool) == ("avg", "max")


def test_load_round_trip_pth_and_safetensors(weights, tmp_path):
    net, path = weights
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        logits, feats = net(x)
    assert logits.shape == (2, 1008) and feats.shape == (2, 2048)
    loaded = load_inception(path)
    with torch.no_grad():
        assert torch.equal(loaded(x)[1], feats)
    st = tmp_path / "inception.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, st)
    with torch.no_grad():
        assert torch.equal(load_inception(st)(x)[1], feats)


def test_bad_weight_files_are_clear_errors(weights, tmp_path):
    net, _ = weights
    pickled_module = tmp_path / "module.pth"
    torch.save(torch.nn.Linear(2, 2), pickled_module)  # a pickled object, not a state dict
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_inception(pickled_module)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_inception(tmp_path / "nope.pth")
    state = net.state_dict()
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, partial)
    with pytest.raises(CheckpointError, match="tensors missing.*pt_inception-2015-12-05"):
        load_inception(partial)
    wrong = tmp_path / "wrong.pth"
    torch.save({**state, "fc.weight": torch.zeros(1000, 2048)}, wrong)
    with pytest.raises(CheckpointError, match=r"'fc.weight' has shape \(1000, 2048\), expected \(1008, 2048\)"):
        load_inception(wrong)


@pytest.mark.slow
def test_evaluate_in_inception_space(weights, tmp_path):
    import hetgan
    from hetgan.eval.score import evaluate

    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny.npz"
    np.savez(npz, images=rng.integers(0, 256, (12, 28, 28), dtype=np.uint8))
    cfg = tiny_config(f"npz:{npz}")
    cfg.train.kimg = 0.016
    G = hetgan.load_generator(hetgan.train(cfg, out=tmp_path / "run", progress=False).run_dir)
    _, path = weights
    r = evaluate(G, n=10, metrics=("fid",), inception=path)  # the fewest evaluate takes
    assert "InceptionV3 pool3" in r["feature_space"] and r["n_real"] == 12
    assert np.isfinite(r["fid"]) and r["fid"] > 0
    with pytest.raises(HetganError, match="classes"):
        evaluate(G, n=10, metrics=("classes",), inception=path)
