import gzip
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from hetgan.config import DataConfig
from hetgan.data import check_spec, colour_warning, describe_data, load_data, make_sampler
from hetgan.data.images import MAX_IMAGE_PIXELS, LazyImages, decode_files, list_image_files
from hetgan.errors import DataError
from hetgan.training.loop import train


def cfg(spec, resolution=32, channels=1, on_bad_image="error"):
    return DataConfig(spec=spec, resolution=resolution, channels=channels, on_bad_image=on_bad_image)


def test_bundled_mnist5k():
    data = load_data(cfg("mnist5k"))
    assert data.images.shape == (5000, 1, 32, 32) and data.images.dtype == np.uint8
    assert np.bincount(data.labels).tolist() == [500] * 10


def test_the_bundled_digits_are_resized_once_per_size_and_each_caller_gets_a_copy():
    from hetgan.data.sources import _mnist5k_at

    first = load_data(cfg("mnist5k", resolution=24))
    before = _mnist5k_at.cache_info()
    second = load_data(cfg("mnist5k", resolution=24))
    assert _mnist5k_at.cache_info().hits == before.hits + 1 and _mnist5k_at.cache_info().misses == before.misses
    assert np.array_equal(first.images, second.images) and first.images.shape == (5000, 1, 24, 24)
    first.images[:] = 0
    first.labels[:] = 0
    first.class_names.append("x")
    third = load_data(cfg("mnist5k", resolution=24))
    assert np.array_equal(third.images, second.images) and third.images.any()  # nobody's change shows
    assert np.bincount(third.labels).tolist() == [500] * 10 and len(third.class_names) == 10


def test_npz_hwc_rgb_to_gray_and_resize(tmp_path):
    images = np.zeros((3, 40, 60, 3), dtype=np.uint8)
    images[:, :, 10:50] = 255  # exactly the centre square: the crop must keep only white
    np.savez(tmp_path / "x.npz", images=images)
    data = load_data(cfg(f"npz:{tmp_path / 'x.npz'}", resolution=16))
    assert data.images.shape == (3, 1, 16, 16) and data.labels is None
    assert data.images.min() == 255


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "nolabel.npz", pics=np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DataError, match="no 'images' array"):
        load_data(cfg(f"npz:{tmp_path / 'nolabel.npz'}"))
    np.savez(tmp_path / "count.npz", images=np.zeros((3, 8, 8), np.uint8), labels=np.zeros(2))
    with pytest.raises(DataError, match="3 images but 2 labels"):
        load_data(cfg(f"npz:{tmp_path / 'count.npz'}"))
    np.savez(tmp_path / "float.npz", images=np.zeros((3, 8, 8), np.float32))
    with pytest.raises(DataError, match="must be uint8"):
        load_data(cfg(f"npz:{tmp_path / 'float.npz'}"))


def broken_npz_files(folder):
    """(path, what the error must say) for files that are not a readable .npz of images."""
    np.save(folder / "single.npy", np.zeros((3, 8, 8), np.uint8))
    np.savez_compressed(folder / "good.npz", images=np.arange(4000, dtype=np.uint8).reshape(10, 20, 20))
    whole = (folder / "good.npz").read_bytes()
    damaged = bytearray(whole)
    damaged[100:300] = bytes(200)  # inside the compressed images member: its CRC no longer matches
    np.savez(folder / "objects.npz", images=np.array([None, 1], dtype=object))
    files = {
        "empty.npz": (b"", "not a readable .npz file"),
        "text.npz": (b"hello\n", r"neither \.npz nor \.npy"),
        "truncated.npz": (whole[: len(whole) // 2], "not a readable .npz file"),
        "damaged.npz": (bytes(damaged), "cannot read its 'images' array"),
        "single.npz": ((folder / "single.npy").read_bytes(), "a single .npy array, not an .npz archive"),
        "objects.npz": ((folder / "objects.npz").read_bytes(), "cannot read its 'images' array"),
    }
    for name, (data, _) in files.items():
        (folder / name).write_bytes(data)
    return [(folder / name, message) for name, (_, message) in files.items()]


def test_unreadable_npz_files_are_data_errors(tmp_path):
    """Not an .npz, cut short, damaged inside, a lone .npy, or pickled objects: each is a
    DataError naming the file and the expected form, never a traceback from numpy or zipfile."""
    for path, message in broken_npz_files(tmp_path):
        with pytest.raises(DataError, match=message) as e:
            load_data(cfg(f"npz:{path}"))
        assert str(path) in str(e.value) and "numpy.savez" in str(e.value)


def write_idx(path, array, gz=False):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def make_mnist(root, n=(6, 4), gz=True):
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for split, count in zip(("train", "t10k"), n, strict=True):
        write_idx(root / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 255, (count, 28, 28), np.uint8), gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, count).astype(np.uint8), gz)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    make_mnist(tmp_path, gz=gz)
    data = load_data(cfg(f"mnist:{tmp_path}", resolution=28))
    assert data.images.shape == (10, 1, 28, 28) and len(data.labels) == 10


def test_mnist_truncated_says_expected_and_actual(tmp_path):
    make_mnist(tmp_path, gz=False)
    f = tmp_path / "train-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: size is 4620 bytes but its header .* needs 4720"):
        load_data(cfg(f"mnist:{tmp_path}"))


def test_mnist_label_count_mismatch(tmp_path):
    make_mnist(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="t10k split has 4 images but 3 labels"):
        load_data(cfg(f"mnist:{tmp_path}"))


def test_mnist_missing_file(tmp_path):
    make_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="missing t10k-labels-idx1-ubyte"):
        load_data(cfg(f"mnist:{tmp_path}"))


def make_cifar(root, n_files=1):
    rng = np.random.default_rng(0)
    for i in range(1, n_files + 1):
        records = rng.integers(0, 256, (10_000, 3073), dtype=np.uint8)
        records[:, 0] %= 10
        (root / f"data_batch_{i}.bin").write_bytes(records.tobytes())
    return records


def test_cifar10_binary(tmp_path):
    records = make_cifar(tmp_path)
    data = load_data(cfg(f"cifar10:{tmp_path}", channels=3))
    assert data.images.shape == (10_000, 3, 32, 32)
    # The reader keeps CIFAR's channel-planar layout: record bytes 1..1024 are the red plane.
    assert np.array_equal(data.images[0, 0].ravel(), records[0, 1:1025])
    assert data.labels.tolist()[:5] == records[:5, 0].tolist()


def test_cifar10_truncated(tmp_path):
    make_cifar(tmp_path)
    f = tmp_path / "data_batch_1.bin"
    f.write_bytes(f.read_bytes()[:-5])
    with pytest.raises(DataError, match="data_batch_1.bin: size is 30729995 bytes, expected 30730000"):
        load_data(cfg(f"cifar10:{tmp_path}", channels=3))


def save_img(path, size=(20, 20), color=128, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (color, color // 2, 0)).save(path, format=fmt)


def test_folder_with_classes_and_formats(tmp_path):
    save_img(tmp_path / "cats" / "a.png")
    save_img(tmp_path / "cats" / "deep" / "b.jpg")
    save_img(tmp_path / "dogs" / "c.webp")
    save_img(tmp_path / "dogs" / "d.bmp")
    (tmp_path / "notes.txt").write_text("ignored: not an image suffix")
    data = load_data(cfg(f"folder:{tmp_path}", resolution=8, channels=3))
    assert data.images.shape == (4, 3, 8, 8)
    assert data.class_names == ["cats", "dogs"] and data.labels.tolist() == [0, 0, 1, 1]


def test_colour_data_read_in_grayscale_is_named(tmp_path):
    """Each reader names an item stored in colour where data.channels=1 reads the data in
    grayscale (a folder by its files' headers), and nothing where the data is grey or read in colour."""
    (tmp_path / "grey").mkdir()
    for i in range(1, 40):
        Image.new("L", (12, 12), i).save(tmp_path / "grey" / f"{i:02d}.png")
    assert load_data(cfg(f"folder:{tmp_path / 'grey'}")).colour_item is None
    Image.new("P", (12, 12)).save(tmp_path / "grey" / "10p.png")  # a palette: may be grey, not named
    assert load_data(cfg(f"folder:{tmp_path / 'grey'}")).colour_item is None
    save_img(tmp_path / "grey" / "20.jpg")  # among 16 headers spread over the 42 files
    for loader in ("auto", "stream"):
        folder = DataConfig(spec=f"folder:{tmp_path / 'grey'}", loader=loader)
        assert load_data(folder).colour_item == str(tmp_path / "grey" / "20.jpg")
    assert load_data(cfg(f"folder:{tmp_path / 'grey'}", channels=3)).colour_item is None
    np.savez(tmp_path / "rgb.npz", images=np.zeros((2, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "grey.npz", images=np.zeros((2, 8, 8), np.uint8))
    assert load_data(cfg(f"npz:{tmp_path / 'rgb.npz'}")).colour_item == str(tmp_path / "rgb.npz")
    assert load_data(cfg(f"npz:{tmp_path / 'rgb.npz'}", channels=3)).colour_item is None
    assert load_data(cfg(f"npz:{tmp_path / 'grey.npz'}")).colour_item is None
    make_cifar(tmp_path)
    assert load_data(cfg(f"cifar10:{tmp_path}")).colour_item == str(tmp_path)
    assert load_data(cfg(f"cifar10:{tmp_path}", channels=3)).colour_item is None
    assert colour_warning(load_data(cfg("mnist5k"))) is None


def test_a_run_logs_what_it_trains_on_and_warns_of_colour_read_in_grayscale(tmp_path, caplog):
    from tests.conftest import tiny_config

    for i in range(4):
        save_img(tmp_path / "pics" / ("a" if i % 2 else "b") / f"{i}.png", color=40 * i)
    for channels, warned in ((1, True), (3, False)):
        caplog.clear()
        config = tiny_config(f"folder:{tmp_path / 'pics'}", kimg=0.008)
        config.data.channels = channels
        with caplog.at_level("INFO", logger="hetgan"):
            train(config, out=tmp_path / f"run{channels}", progress=False)
        shown = f"data folder:{tmp_path / 'pics'}: 4 images, 2 classes, 32x32 {'grayscale' if warned else 'colour'}"
        shown += " (stored 20x20, centre-cropped to a square, then resized with Lanczos to 32x32)"
        assert shown in caplog.messages
        warning = f"{tmp_path / 'pics' / 'a' / '1.png'} is stored in colour, but data.channels=1"
        assert (warning in caplog.text) == warned
    ring = "ring8: 2-D mixture of 8 Gaussians, sigma 0.01, sampled on the fly"
    assert describe_data(load_data(cfg("ring8")), "ring8") == ring
    streamed = load_data(DataConfig(spec=f"folder:{tmp_path / 'pics'}", loader="stream", resolution=8, channels=3))
    resized = "(stored 20x20, centre-cropped to a square, then resized with Lanczos to 8x8)"
    want = f"S: 4 files, decoded as training reaches them, 2 classes, 8x8 colour {resized}"
    assert describe_data(streamed, "S") == want


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        load_data(cfg(f"folder:{tmp_path}"))


def bad_files(root):
    """One of each kind of bad file, keyed by the phrase its error must contain."""
    save_img(root / "good.jpg", size=(64, 64))
    truncated = (root / "good.jpg").read_bytes()
    (root / "trunc.jpg").write_bytes(truncated[: len(truncated) // 2])
    save_img(root / "png_src.png", size=(64, 64))
    png = (root / "png_src.png").read_bytes()
    (root / "png_src.png").unlink()
    (root / "trunc.png").write_bytes(png[: len(png) - 30])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_bytes(b"this is not an image at all")
    (root / "bomb.png").write_bytes(png_header_claiming(100_000, 100_000))
    return {
        "trunc.jpg": "truncated",
        "trunc.png": "truncated",
        "empty.png": "empty",
        "text.png": "not a readable image",
        "bomb.png": "decompression bomb",
    }


def png_header_claiming(width, height):
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_each_bad_image_is_named_with_reason(tmp_path):
    expected = bad_files(tmp_path)
    assert 100_000 * 100_000 > MAX_IMAGE_PIXELS
    for name, phrase in expected.items():
        folder = tmp_path / f"only_{name}"
        folder.mkdir()
        (folder / name).write_bytes((tmp_path / name).read_bytes())
        with pytest.raises(DataError) as e:
            load_data(cfg(f"folder:{folder}"))
        assert name in str(e.value) and phrase in str(e.value), str(e.value)


def test_skip_mode_drops_bad_and_stops_above_ten_percent(tmp_path, caplog):
    for i in range(19):
        save_img(tmp_path / f"ok{i}.png")
    (tmp_path / "broken.png").write_bytes(b"garbage")
    data = load_data(cfg(f"folder:{tmp_path}", on_bad_image="skip"))
    assert len(data.images) == 19
    assert "broken.png" in caplog.text and "skipped 1 bad image(s) of 20" in caplog.text
    for i in range(3):
        (tmp_path / f"broken{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="4 of 23 images are bad"):
        load_data(cfg(f"folder:{tmp_path}", on_bad_image="skip"))


def test_parallel_decoding_keeps_file_order_and_the_first_error(tmp_path):
    """Worker threads decode out of order; results, skips and the error raised follow file order."""
    bad_files(tmp_path)  # bomb.png, empty.png, good.jpg, text.png, trunc.jpg, trunc.png
    for i in range(12):
        save_img(tmp_path / f"img{i:02d}.png", color=10 * i)
    files = list_image_files(tmp_path)
    serial = decode_files(files, 8, 3, "skip", workers=1)
    parallel = decode_files(files, 8, 3, "skip", workers=4)
    assert serial[1] == parallel[1] == [i for i, f in enumerate(files) if f.name.startswith(("good", "img"))]
    assert all(np.array_equal(a, b) for a, b in zip(serial[0], parallel[0], strict=True))
    assert [path.name for path, _ in parallel[2]] == ["bomb.png", "empty.png", "text.png", "trunc.jpg", "trunc.png"]
    for workers in (1, 4):
        with pytest.raises(DataError, match="bomb.png: .*decompression bomb"):
            decode_files(files, 8, 3, "error", workers=workers)


def test_data_check_reports_every_bad_file(tmp_path):
    expected = bad_files(tmp_path)
    reported = {r[0].split("/")[-1] for r in check_spec(cfg(f"folder:{tmp_path}"))}
    assert reported == set(expected)


def test_unknown_spec_lists_valid_ones():
    with pytest.raises(DataError, match="folder:DIR"):
        load_data(cfg("imagenet"))
    with pytest.raises(DataError, match="needs a path"):
        load_data(cfg("folder"))


def test_mixtures_match_pacgan_protocol():
    ring, grid = load_data(cfg("ring8")), load_data(cfg("grid25"))
    assert np.allclose(np.linalg.norm(ring.modes, axis=1), 1) and ring.sigma == 0.01
    assert sorted(set(grid.modes[:, 0].tolist())) == [-4, -2, 0, 2, 4] and grid.sigma == 0.05
    points = make_sampler(grid, seed=0, device="cpu").next(2000)
    dist = ((points[:, None] - torch.from_numpy(grid.modes)[None]) ** 2).sum(-1).min(1).values.sqrt()
    assert dist.max() < 6 * 0.05 * 1.5


def test_image_sampler_covers_each_epoch_once_and_resumes(digits_npz):
    data = load_data(cfg(f"npz:{digits_npz}", resolution=28))
    s = make_sampler(data, seed=1, device="cpu")
    first_epoch = s.next(128)
    assert len({tuple(x.flatten().tolist()[:16]) for x in first_epoch}) == 128  # no repeats
    s.next(50)
    state = s.state_dict()
    expected = s.next(100)  # crosses into the next epoch
    s2 = make_sampler(data, seed=1, device="cpu")
    s2.load_state_dict(state)
    assert state == {"epoch": 1, "offset": 50} and s2.next(100).equal(expected)
    assert first_epoch.min() >= -1 and first_epoch.max() <= 1


def test_a_position_past_the_end_of_other_data_starts_the_next_epoch(digits_npz):
    """A run resumed on a smaller dataset (--allow-config-change --set data.spec=...) may hold a
    position past its end: the next batch has the asked size, from the next epoch."""
    data = load_data(cfg(f"npz:{digits_npz}", resolution=28))  # 128 images
    s = make_sampler(data, seed=1, device="cpu")
    s.load_state_dict({"epoch": 3, "offset": 1000})
    assert s.next(8).shape == (8, 1, 28, 28) and s.state_dict() == {"epoch": 4, "offset": 8}


def test_prefetch_sampler_matches_resident_and_resumes(digits_npz):
    data = load_data(cfg(f"npz:{digits_npz}", resolution=28))
    resident = make_sampler(data, seed=2, device=torch.device("cpu"), loader="resident")
    prefetch = make_sampler(data, seed=2, device=torch.device("cpu"), loader="prefetch")
    assert type(prefetch).__name__ == "PrefetchSampler"
    for _ in range(5):  # crosses an epoch boundary (128 images, batches of 48)
        assert torch.equal(resident.next(48), prefetch.next(48))
    state = prefetch.state_dict()
    assert state == resident.state_dict()  # the position handed out, not the one prefetched
    expected = resident.next(48)
    again = make_sampler(data, seed=2, device=torch.device("cpu"), loader="prefetch")
    again.load_state_dict(state)
    assert torch.equal(again.next(48), expected)
    prefetch.close()
    again.close()


def test_prefetch_worker_error_is_raised_not_waited_on(digits_npz):
    import threading

    data = load_data(cfg(f"npz:{digits_npz}", resolution=28))
    prefetch = make_sampler(data, seed=2, device=torch.device("cpu"), loader="prefetch")
    calls = []
    real_next = prefetch.cpu.next_uint8

    def failing_next(batch_size):
        calls.append(batch_size)
        if len(calls) == 2:
            raise RuntimeError("disk went away")
        return real_next(batch_size)

    prefetch.cpu.next_uint8 = failing_next
    outcome = []

    def consume():
        try:
            prefetch.next(16)
            prefetch.next(16)
        except RuntimeError as e:
            outcome.append(str(e))

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and outcome == ["disk went away"]
    assert prefetch.state_dict() == {"epoch": 0, "offset": 16}  # the position of the one batch handed out


def test_samplers_on_the_same_data_share_one_device_copy(digits_npz):
    data = load_data(cfg(f"npz:{digits_npz}", resolution=28))
    a = make_sampler(data, seed=0, device=torch.device("cpu"), loader="resident")
    b = make_sampler(data, seed=1, device=torch.device("cpu"), loader="resident")
    assert a.images is b.images and list(data.device_copies) == ["cpu"]
    assert not torch.equal(a.next(16), b.next(16))  # each keeps its own order


def test_auto_loader_keeps_small_data_resident(digits_npz):
    data = load_data(cfg(f"npz:{digits_npz}", resolution=28))
    assert type(make_sampler(data, 0, torch.device("cpu"))).__name__ == "ImageSampler"


def digit_folder(root, n=24):
    """n distinct small PNGs in two class folders."""
    for i in range(n):
        save_img(root / ("odd" if i % 2 else "even") / f"{i:03d}.png", size=(12, 10), color=8 * i)
    return root


@pytest.mark.parametrize(("resolution", "cached"), [(8, 24), (187, 9)])
def test_stream_loader_keeps_what_fits_its_cache(tmp_path, monkeypatch, resolution, cached):
    """1 MB holds all 24 items at 8 px, and the first 9 at 187 px (3 x 187 x 187 bytes each): a
    second pass decodes only the others, and returns the same pixels."""
    import hetgan.data.images as images

    folder = digit_folder(tmp_path / "f")
    spec = DataConfig(spec=f"folder:{folder}", resolution=resolution, channels=3, loader="stream", cache_mb=1)
    lazy = load_data(spec).images
    decoded = []
    real_try_decode = images.try_decode
    monkeypatch.setattr(images, "try_decode", lambda path, *a: decoded.append(path) or real_try_decode(path, *a))
    first = lazy[np.arange(24)[::-1]]
    assert len(decoded) == 24
    second = lazy[:]
    assert np.array_equal(first[::-1], second) and len(decoded) == 24 + (24 - cached)
    monkeypatch.undo()
    resident = load_data(cfg(f"folder:{folder}", resolution=resolution, channels=3)).images
    assert np.array_equal(second, resident)


def test_stream_loader_draws_what_the_resident_one_does_and_resumes(tmp_path):
    folder = digit_folder(tmp_path / "f")
    resident = load_data(cfg(f"folder:{folder}", resolution=8, channels=3))
    streamed = load_data(DataConfig(spec=f"folder:{folder}", resolution=8, channels=3, loader="stream"))
    assert isinstance(streamed.images, LazyImages) and streamed.images.shape == resident.images.shape
    assert np.array_equal(np.asarray(streamed.images), resident.images)  # decodes everything on request
    assert (
        np.array_equal(streamed.images[3], resident.images[3]) and streamed.labels.tolist() == resident.labels.tolist()
    )
    assert np.array_equal(streamed.images[[-1, 0]], resident.images[[-1, 0]]) and streamed.images[5:5].shape[0] == 0
    with pytest.raises(IndexError):
        streamed.images[[24]]
    a = make_sampler(resident, seed=5, device=torch.device("cpu"), loader="resident")
    b = make_sampler(streamed, seed=5, device=torch.device("cpu"), loader="stream")
    for _ in range(4):  # crosses an epoch boundary (24 images, batches of 10)
        assert torch.equal(a.next(10), b.next(10))
    again = make_sampler(streamed, seed=5, device=torch.device("cpu"), loader="stream")
    again.load_state_dict(b.state_dict())
    assert torch.equal(again.next(10), a.next(10))
    b.close()
    again.close()


def test_stream_loader_meets_a_bad_file_when_it_reaches_it(tmp_path, caplog):
    folder = digit_folder(tmp_path / "f", n=30)
    (folder / "even" / "010.png").write_bytes(b"garbage")  # index 5 in file order (even/000, 002, ...)
    strict = load_data(DataConfig(spec=f"folder:{folder}", resolution=8, loader="stream"))  # nothing decoded yet
    assert strict.images[4].shape == (1, 8, 8)
    with pytest.raises(DataError, match=r"(?s)010\.png: not a readable image.*hetgan data check folder:DIR"):
        strict.images[[3, 5]]
    lenient = load_data(DataConfig(spec=f"folder:{folder}", resolution=8, loader="stream", on_bad_image="skip"))
    assert np.array_equal(lenient.images[5], lenient.images[6])  # the next good file stands in, every time
    assert "skipping bad image" in caplog.text and "010.png" in caplog.text
    for i in range(30):
        (folder / ("odd" if i % 2 else "even") / f"{i:03d}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="images decoded so far are bad"):
        load_data(DataConfig(spec=f"folder:{folder}", resolution=8, loader="stream", on_bad_image="skip")).images[:]


def test_stream_loader_needs_a_folder():
    from hetgan.config import TrainConfig, apply_overrides
    from hetgan.errors import ConfigError

    with pytest.raises(ConfigError, match="data.loader=stream .* needs a folder:DIR dataset, not 'mnist5k'"):
        apply_overrides(TrainConfig(), ["data.loader=stream"])


def test_training_on_a_streamed_folder_equals_training_on_the_decoded_one(tmp_path):
    from hetgan.training.trainer import Trainer
    from tests.conftest import assert_train_alike, tiny_config

    folder = digit_folder(tmp_path / "f")
    plain = Trainer(tiny_config(f"folder:{folder}"))
    streamed_cfg = tiny_config(f"folder:{folder}")
    streamed_cfg.data.loader = "stream"
    streamed = Trainer(streamed_cfg)
    assert_train_alike(plain, streamed, steps=4)
    streamed.sampler.close()
