import numpy as np
import pytest
import torch
from PIL import Image

from hetgan import load_generator
from hetgan.artifact import recalibrated_for, save_generator
from hetgan.errors import CheckpointError, ConfigError, HetganError
from hetgan.fileio import read_safetensors
from hetgan.sample_files import write_samples
from hetgan.training.loop import train
from hetgan.training.trainer import Trainer
from tests.conftest import tiny_config


def test_save_load_gives_identical_samples(tiny, tmp_path):
    t = Trainer(tiny)
    for _ in range(2):
        t.step()
    path = save_generator(t.G_ema, tiny, tmp_path / "g.safetensors")
    G1, G2 = load_generator(path), load_generator(path)
    a, b = G1.sample(10, seed=5), G2.sample(10, seed=5)
    assert a.shape == (10, 1, 32, 32) and torch.equal(a, b)
    assert not torch.equal(a, G1.sample(10, seed=6))
    assert a.min() >= -1 and a.max() <= 1
    assert G1.config.model.width == tiny.model.width  # config travels with the weights


def test_loading_onto_a_device_this_machine_lacks_is_a_clear_error(tiny, tmp_path, capsys):
    """`hetgan sample --device cuda` on a machine without one was torch's AssertionError."""
    from hetgan.cli import main

    path = save_generator(Trainer(tiny).G_ema, tiny, tmp_path / "g.safetensors")
    with pytest.raises(ConfigError, match="device 'cuda:99' is not available on this machine"):
        load_generator(path, device="cuda:99")
    assert load_generator(path, device="auto").sample(2).shape == (2, 1, 32, 32)
    assert main(["sample", "--artifact", str(path), "--out", str(tmp_path / "s.png"), "--device", "gpu"]) == 2
    assert "unknown device 'gpu'; use auto, cpu, cuda, cuda:N, mps or xpu" in capsys.readouterr().err


def test_sample_batches_do_not_change_results(tiny, tmp_path):
    path = save_generator(Trainer(tiny).G_ema, tiny, tmp_path / "g.safetensors")
    G = load_generator(path)
    assert torch.allclose(G.sample(9, seed=1, batch_size=4), G.sample(9, seed=1, batch_size=256), atol=1e-6)


def test_samples_are_drawn_in_full_fp32_and_the_flags_restored(tiny, tmp_path):
    """On an NVIDIA GPU cuDNN convolves in TF32 unless told not to (torch's default): `hetgan
    sample`, the server and eval draw G's samples with TF32 off, and give the caller its flags back
    between batches."""
    from hetgan.accel import restored_backend_flags

    G = load_generator(save_generator(Trainer(tiny).G_ema, tiny, tmp_path / "g.safetensors"))
    seen, forward = [], G.net.forward

    def probe(z):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return forward(z)

    G.net.forward = probe
    with restored_backend_flags():
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
        for _ in G.sample_batches(5, batch_size=2):
            assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    assert seen == [(False, False)] * 3


def test_uint8_samples_batch_by_batch_equal_the_float_ones(tiny, tmp_path):
    """What `hetgan sample` writes (converted batch by batch, never holding n float samples) is
    exactly what the float samples give, in every output form."""
    from hetgan.sample_files import sample_uint8, to_uint8

    G = load_generator(save_generator(Trainer(tiny).G_ema, tiny, tmp_path / "g.safetensors"))
    as_bytes = sample_uint8(G, 300, seed=2)  # more than one batch of 256
    floats = G.sample(300, seed=2)
    assert as_bytes.shape == (300, 32, 32, 1) and np.array_equal(as_bytes, to_uint8(floats))
    assert np.array_equal(np.load(write_samples(as_bytes, tmp_path / "a.npz"))["images"], as_bytes)
    assert Image.open(write_samples(as_bytes, tmp_path / "a.png")).tobytes() == (
        Image.open(write_samples(floats, tmp_path / "b.png")).tobytes()
    )
    folder = write_samples(as_bytes[:3], str(tmp_path / "pngs") + "/")
    assert np.array_equal(np.asarray(Image.open(folder / "00002.png")), as_bytes[2, :, :, 0])


def test_recalibrated_batchnorm_is_deterministic_and_differs_from_g(tiny, tmp_path):
    t = Trainer(tiny)
    for _ in range(3):
        t.step()
    G = load_generator(save_generator(t.G_ema, tiny, tmp_path / "g.safetensors"))
    bn = next(m for m in G.net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    g_bn = next(m for m in t.G.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not torch.equal(bn.running_mean, g_bn.running_mean)


def test_the_trainer_recalibrates_once_per_step_and_writes_the_same_artifact(tiny, tmp_path):
    """The grid, the evaluation and the artifact of one step share one recalibrated copy: it is the
    copy `recalibrated_for` makes afresh, and the artifact written from it holds the tensors and
    metadata `save_generator` writes from G_ema itself. A step or a loaded checkpoint makes a new one."""
    t = Trainer(tiny)
    for _ in range(2):
        t.step()
    first = t.recalibrated_G_ema()
    assert t.recalibrated_G_ema() is first
    fresh = recalibrated_for(t.G_ema, tiny)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), fresh.state_dict().values(), strict=True))
    a = save_generator(t.G_ema, tiny, tmp_path / "a.safetensors")
    b = save_generator(first, tiny, tmp_path / "b.safetensors", recalibrated=True)
    (ta, ma), (tb, mb) = (read_safetensors(p, "artifact", "") for p in (a, b))
    assert ma == mb and ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    tensors, meta = t.state()
    t.step()
    stepped = t.recalibrated_G_ema()
    assert stepped is not first and not torch.equal(next(stepped.parameters()), next(first.parameters()))
    t.load_state(tensors, meta)
    assert t.recalibrated_G_ema() is not stepped


def test_load_generator_rejects_other_files(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors.*written by `hetgan train`"):
        load_generator(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="cannot read generator artifact"):
        load_generator(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a hetgan generator artifact"):
        load_generator(tmp_path / "other.safetensors")


def test_write_samples_forms(tmp_path):
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    grid = Image.open(write_samples(images, tmp_path / "g.png"))
    assert grid.size == (3 * 10 + 2, 2 * 10 + 2) and grid.mode == "RGB"
    npz = np.load(write_samples(images, tmp_path / "s.npz"))
    assert npz["images"].shape == (5, 8, 8, 3) and npz["images"].dtype == np.uint8


def test_to_uint8_in_chunks_matches_the_whole_and_leaves_its_input():
    from hetgan.sample_files import to_uint8

    images = torch.randn(7, 3, 4, 5) * 1.5  # some beyond [-1, 1]
    before = images.clone()
    whole = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(to_uint8(images, chunk=3), whole)  # chunks of 3, 3 and 1
    assert torch.equal(images, before)


def test_write_samples_folder_and_points(tmp_path):
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    folder = write_samples(images, str(tmp_path / "pngs") + "/")
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png"]
    points = torch.randn(50, 2)
    npz = np.load(write_samples(points, tmp_path / "p.npz"))
    assert npz["points"].shape == (50, 2) and npz["points"].dtype == np.float32
    assert Image.open(write_samples(points, tmp_path / "p.png", modes=np.zeros((1, 2)))).size[0] > 100
    with pytest.raises(HetganError, match="unknown output form"):
        write_samples(images, tmp_path / "x.gif")


def test_2d_run_samples_points(tmp_path):
    run = train(tiny_config("ring8", arch="mlp"), out=tmp_path / "r", progress=False).run_dir
    G = load_generator(run)
    pts = G.sample(7, seed=0)
    assert pts.shape == (7, 2)


def test_unfinished_run_samples_from_its_newest_checkpoint(tiny, tmp_path):
    tiny.train.kimg = 0.08
    run = train(tiny, out=tmp_path / "r", progress=False).run_dir
    finished = load_generator(run).sample(4, seed=0)
    (run / "generator.safetensors").unlink()  # as if killed after the last checkpoint
    from_ckpt = load_generator(run).sample(4, seed=0)
    assert torch.equal(finished, from_ckpt)


def test_load_evalnet_rejects_bad_files(tmp_path):
    from hetgan.eval.evalnet import load_evalnet

    (tmp_path / "x.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointError, match="not a valid safetensors evalnet file.*hetgan evalnet train"):
        load_evalnet(tmp_path / "x.safetensors")
    with pytest.raises(CheckpointError, match="cannot read evalnet file"):
        load_evalnet(tmp_path / "missing.safetensors")


def test_truncation_and_latent_walks(tiny, tmp_path, capsys):
    """Truncation scales the seed's z; a walk runs from one seed's sample to the other's, in the
    Python API and `hetgan sample --truncation/--interpolate` alike (issue 26)."""
    from hetgan.cli import main

    path = save_generator(Trainer(tiny).G_ema, tiny, tmp_path / "g.safetensors")
    G = load_generator(path)
    z = G.latent(6, seed=3)
    assert torch.equal(G.latent(6, seed=3, truncation=0.5), 0.5 * z) and torch.equal(G.latent(6, 3, 1.0), z)
    assert torch.allclose(G.sample(6, seed=3, truncation=0.5), G.generate(0.5 * z))
    with pytest.raises(HetganError, match=r"truncation must be in \(0, 1\], got 1.5"):
        G.sample(2, truncation=1.5)
    walk = G.interpolate(3, 4, frames=7)
    assert walk.shape == (7, 1, 32, 32)
    assert torch.allclose(walk[0], G.sample(1, seed=3)[0], atol=1e-5)
    assert torch.allclose(walk[-1], G.sample(1, seed=4)[0], atol=1e-5)
    assert (walk[1:] - walk[:-1]).abs().mean() < (walk[-1] - walk[0]).abs().mean()  # steps, not a jump
    with pytest.raises(HetganError, match="at least 2 frames"):
        G.interpolate(0, 1, frames=1)

    assert main(["sample", "--artifact", str(path), "--interpolate", "3", "4", "--frames", "7",
                 "--out", str(tmp_path / "walk.gif")]) == 0  # fmt: skip
    gif = Image.open(tmp_path / "walk.gif")
    assert gif.n_frames == 12 and gif.size == (128, 128)  # there and back; 32 px shown at 4x
    assert main(["sample", "--artifact", str(path), "--interpolate", "3", "4", "--frames", "7",
                 "--out", str(tmp_path / "walk.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "walk.png").size == (7 * 34 + 2, 36)
    assert main(["sample", "--artifact", str(path), "--n", "6", "--seed", "3", "--truncation", "0.5",
                 "--out", str(tmp_path / "t.npz")]) == 0  # fmt: skip
    from hetgan.sample_files import to_uint8

    assert np.array_equal(np.load(tmp_path / "t.npz")["images"], to_uint8(G.sample(6, seed=3, truncation=0.5)))
    assert main(["sample", "--artifact", str(path), "--interpolate", "1", "2", "--out", str(tmp_path / "w.mp4")]) == 2
    assert "FILE.gif (an animation) or FILE.png (a strip)" in capsys.readouterr().err


@pytest.mark.slow
def test_report_shows_latent_walks_for_images_only(tmp_path):
    from hetgan.report.html import build_report

    run = train(tiny_config("ring8", arch="mlp"), out=tmp_path / "ring", progress=False).run_dir
    assert "Latent walks" not in build_report(run).read_text()
    cfg = tiny_config("mnist5k")
    cfg.train.kimg = 0.016
    page = build_report(train(cfg, out=tmp_path / "digits", progress=False).run_dir).read_text()
    assert page.count('alt="walk seed') == 3
