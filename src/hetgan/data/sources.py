"""Dataset readers, chosen by a spec string: `NAME` or `NAME:PATH` (see `describe_specs`).

Every reader returns either `ImageData` (uint8 [N, C, R, R] already at the model's size) or a
`Mixture` (a 2-D Gaussian mixture sampled on the fly). Bad files raise DataError naming the file,
what was expected and what was found.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from hetgan.config import DataConfig, TrainConfig
from hetgan.data.images import (
    LazyImages,
    arrays_to_model,
    colour_file,
    decode_files,
    list_image_files,
    require_mostly_good,
    resize_note,
    stored_sizes,
)
from hetgan.errors import DataError
from hetgan.registry import Registry


@dataclass
class ImageData:
    images: np.ndarray | LazyImages  # uint8 [N, C, R, R]; LazyImages decodes files on access
    labels: np.ndarray | None  # int64 [N] or None
    class_names: list[str] | None
    source: str
    # An item stored in colour (a file, or the array's source), where data.channels=1 reads the
    # data in grayscale: the run says so, since that is rarely what colour data was meant for.
    colour_item: str | None = None
    # How the stored images were brought to the model's size (`resize_note`), None when they were not.
    resized: str | None = None
    # The images as a torch tensor on each device a sampler has put them on, shared by every
    # trainer on this data (tune builds one per candidate): one copy per device, not per trainer.
    device_copies: dict = field(default_factory=dict, repr=False, compare=False)


@dataclass
class Mixture:
    """A 2-D Gaussian mixture with equal weights (PacGAN protocol, Lin et al. 2018)."""

    name: str
    modes: np.ndarray  # float32 [M, 2]
    sigma: float
    # A self-conditioned run's (data.clusters) k-means centres float64 [k, 2], which label each
    # point drawn by the nearest, and each cluster's share of the points; None = unlabelled.
    centres: np.ndarray | None = None
    centre_weights: list[float] = field(default_factory=list)


Data = ImageData | Mixture
Reader = Callable[[str, DataConfig], Data]
DATASETS: Registry[Reader] = Registry("dataset")
SPEC_HELP = {
    "mnist5k": "the 5000 bundled MNIST digits (default)",
    "mnist:DIR": "the MNIST IDX files (train + t10k, gzipped or not)",
    "cifar10:DIR": "CIFAR-10 binary version, data_batch_*.bin",
    "folder:DIR": "PNG/JPEG/WebP/BMP files under DIR; subfolders name classes",
    "npz:FILE": "uint8 `images` (N,H,W) or (N,H,W,C), optional `labels` and `class_names`",
    "stacked_mnist": "Stacked MNIST: 3 bundled digits drawn independently into R, G, B (1000 modes; data.channels=3)",
    "ring8": "8 Gaussians on a circle of radius 1, sigma 0.01",
    "grid25": "25 Gaussians on {-4,-2,0,2,4}^2, sigma 0.05",
}


def describe_specs() -> str:
    return "\n".join(f"  {spec:<12} {text}" for spec, text in SPEC_HELP.items())


PATH_SPECS = {"mnist", "cifar10", "folder", "npz"}  # the specs whose argument is a file or folder


def parse_spec(spec: str) -> tuple[str, str]:
    name, _, arg = spec.partition(":")
    if name not in DATASETS:
        raise DataError(f"unknown data spec {spec!r}; valid specs:\n{describe_specs()}")
    if name in PATH_SPECS and not arg:
        raise DataError(f"data spec {spec!r} needs a path, e.g. {name}:/path/to/data")
    return name, arg


def absolute_path(path: str) -> str:
    """`path` from the working directory, `~` expanded, symlinks kept: the same file from anywhere."""
    return os.path.abspath(os.path.expanduser(path))


def absolute_spec(spec: str) -> str:
    """The spec with its path made absolute (`absolute_path`); other specs, and malformed ones
    (which `load_data` reports), as they are."""
    name, sep, arg = spec.partition(":")
    if name not in PATH_SPECS or not arg:
        return spec
    return f"{name}{sep}{absolute_path(arg)}"


def load_data(cfg: DataConfig) -> Data:
    name, arg = parse_spec(cfg.spec)
    return DATASETS.get(name)(arg, cfg)


def is_mixture_spec(spec: str) -> bool:
    return parse_spec(spec)[0] in ("ring8", "grid25")


@DATASETS.register("mnist5k")
def read_mnist5k(arg: str, cfg: DataConfig) -> ImageData:
    """The bundled digits at the config's resolution and channels: a copy of the process's one
    conversion for that size (`_mnist5k_at`), so a caller may change its arrays."""
    data = _mnist5k_at(cfg.resolution, cfg.channels)
    copies = {"images": data.images.copy(), "labels": data.labels.copy(), "class_names": list(data.class_names)}
    return dataclasses.replace(data, **copies, device_copies={})


@functools.lru_cache(maxsize=4)
def _mnist5k_at(resolution: int, channels: int) -> ImageData:
    """The package's digits (28x28, never changed) resized with Lanczos, about a second for the
    5000: once per size in a process that loads them for every run, evaluator and trainer."""
    cfg = DataConfig(spec="mnist5k", resolution=resolution, channels=channels)
    with resources.files("hetgan.data").joinpath("mnist_5k.npz").open("rb") as f:
        return _read_npz_arrays(np.load(f, allow_pickle=False), cfg, "mnist5k")  # labels 0..9: their names


STACKED_N = 50_000  # Stacked MNIST images: 50 of each of the 1000 modes on average
STACKED_SEED = 0  # the same 50,000 stacks for every run: the dataset is fixed, as a file would be


@DATASETS.register("stacked_mnist")
def stacked_mnist(arg: str, cfg: DataConfig) -> ImageData:
    """Stacked MNIST (Metz et al. 2017; the PacGAN and VEEGAN mode-collapse benchmark): three
    digits of the bundled set, drawn independently, as the R, G and B channels of one image, so
    there are 10^3 = 1000 modes. Each image is labelled by its mode, 100 * R + 10 * G + B."""
    if cfg.channels != 3:
        raise DataError(
            f"stacked_mnist images have 3 channels (a digit in each), but data.channels is {cfg.channels}; "
            "pass --set data.channels=3"
        )
    digits = read_mnist5k("", dataclasses.replace(cfg, channels=1))
    pick = np.random.default_rng(STACKED_SEED).integers(0, len(digits.images), (STACKED_N, 3))
    images = digits.images[pick, 0]  # [N, 3, R, R]: digit pick[:, c] in channel c
    labels = (digits.labels[pick] * np.array([100, 10, 1])).sum(1)
    names = [f"{mode:03d}" for mode in range(1000)]
    return ImageData(images, labels, names, "stacked_mnist (from the bundled digits)", resized=digits.resized)


@DATASETS.register("npz")
def read_npz(arg: str, cfg: DataConfig) -> ImageData:
    path = _existing(arg, "npz file", "give the path of a .npz file holding a uint8 `images` array: --data npz:FILE")
    try:
        arrays = np.load(path, allow_pickle=False)
    except NPZ_READ_ERRORS as e:
        # numpy takes what is neither .npz nor .npy for a pickle, which it refuses to load
        reason = "neither .npz nor .npy" if "pickled" in str(e) else e
        raise DataError(f"{path}: not a readable .npz file ({reason}); {NPZ_FORM}") from None
    if not isinstance(arrays, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not an .npz archive; {NPZ_FORM}")
    with arrays:
        return _read_npz_arrays(arrays, cfg, str(path))


NPZ_FORM = "expected numpy.savez(FILE, images=uint8 (N,H,W) or (N,H,W,C)[, labels=...])"
# What numpy and zipfile raise for a file or member that is not a readable array (zlib.error for a
# damaged compressed member, ValueError for pickled objects, which allow_pickle=False refuses).
NPZ_READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_npz_arrays(arrays, cfg: DataConfig, where: str) -> ImageData:
    if "images" not in arrays.files:
        raise DataError(f"{where}: no 'images' array; found {arrays.files}")
    images = _npz_member(arrays, "images", where)
    labels = _npz_member(arrays, "labels", where).astype(np.int64) if "labels" in arrays.files else None
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{where}: {len(images)} images but {len(labels)} labels; counts must match")
    colour = where if cfg.channels == 1 and images.ndim == 4 and images.shape[3] in (3, 4) else None
    resized = array_resize_note(images, cfg.resolution)
    images = arrays_to_model(images, cfg.resolution, cfg.channels, where)
    names = None
    if "class_names" in arrays.files:  # as `hetgan sample --per-class N --out FILE.npz` writes them
        names = [str(name) for name in _npz_member(arrays, "class_names", where)]
    elif labels is not None and len(labels):
        names = [str(i) for i in range(int(labels.max()) + 1)]
    return ImageData(images, labels, names, where, colour, resized=resized)


def array_resize_note(images: np.ndarray, resolution: int) -> str | None:
    """`resize_note` for an array of images [N, H, W(, C)]."""
    return resize_note([(images.shape[2], images.shape[1])], resolution) if images.ndim >= 3 else None


def _npz_member(arrays, name: str, where: str) -> np.ndarray:
    """One array of an .npz archive; a damaged or pickled member is a DataError naming it."""
    try:
        return arrays[name]
    except NPZ_READ_ERRORS as e:
        raise DataError(f"{where}: cannot read its '{name}' array ({e}); {NPZ_FORM}") from None


# --- MNIST IDX (http format of LeCun et al.) -------------------------------------------------
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@DATASETS.register("mnist")
def read_mnist(arg: str, cfg: DataConfig) -> ImageData:
    root = _existing(
        arg,
        "MNIST folder",
        "give the folder holding the four MNIST IDX files (gzipped or not): --data mnist:DIR; "
        "the bundled digits need no files: --data mnist5k",
    )
    images, labels = [], []
    for split, (img_name, lbl_name) in IDX_FILES.items():
        img = read_idx(_find_idx(root, img_name), expected_ndim=3)
        lbl = read_idx(_find_idx(root, lbl_name), expected_ndim=1)
        if len(img) != len(lbl):
            raise DataError(
                f"{root}: {split} split has {len(img)} images but {len(lbl)} labels; "
                "counts must match (files from different releases?)"
            )
        images.append(img)
        labels.append(lbl.astype(np.int64))
    resized = array_resize_note(images[0], cfg.resolution)
    images_np = arrays_to_model(np.concatenate(images), cfg.resolution, cfg.channels, str(root))
    return ImageData(images_np, np.concatenate(labels), [str(i) for i in range(10)], str(root), resized=resized)


def _find_idx(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{root}: missing {name} (or {name}.gz); expected the four MNIST IDX files")


def read_idx(path: Path, expected_ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes, checking its size against its header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"{path}: cannot decompress ({e})") from None
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {raw[:4]!r})")
    ndim = raw[3]
    if ndim != expected_ndim:
        raise DataError(f"{path}: IDX file has {ndim} dimensions, expected {expected_ndim}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated header ({len(raw)} bytes, expected {header})")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape)
    if len(raw) != expected:
        raise DataError(
            f"{path}: size is {len(raw)} bytes but its header {shape} needs {expected}; "
            "the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


# --- CIFAR-10 binary version (Krizhevsky 2009) -----------------------------------------------
CIFAR_RECORD = 1 + 3 * 32 * 32
CIFAR_PER_FILE = 10_000
CIFAR_CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


@DATASETS.register("cifar10")
def read_cifar10(arg: str, cfg: DataConfig) -> ImageData:
    root = _existing(
        arg,
        "CIFAR-10 folder",
        "extract CIFAR-10's binary version (cifar-10-binary.tar.gz) there, or give the folder that holds "
        "its data_batch_*.bin files: --data cifar10:DIR",
    )
    files = sorted(root.glob("data_batch_*.bin")) or sorted(root.glob("*/data_batch_*.bin"))
    if not files:
        raise DataError(f"{root}: no data_batch_*.bin files; expected CIFAR-10's binary version")
    records = [read_cifar_file(f) for f in files]
    data = np.concatenate(records)
    labels = data[:, 0].astype(np.int64)
    images = data[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # [N, H, W, C]
    resized = array_resize_note(images, cfg.resolution)
    images = arrays_to_model(images, cfg.resolution, cfg.channels, str(root))
    colour = str(root) if cfg.channels == 1 else None
    return ImageData(images, labels, CIFAR_CLASSES, str(root), colour, resized=resized)


def read_cifar_file(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    expected = CIFAR_RECORD * CIFAR_PER_FILE
    if len(raw) != expected:
        raise DataError(
            f"{path}: size is {len(raw)} bytes, expected {expected} "
            f"({CIFAR_PER_FILE} records of {CIFAR_RECORD} bytes); the file is truncated or corrupt"
        )
    data = np.frombuffer(raw, dtype=np.uint8).reshape(CIFAR_PER_FILE, CIFAR_RECORD)
    if data[:, 0].max() > 9:
        raise DataError(f"{path}: label byte {data[:, 0].max()} out of range 0..9; not CIFAR-10")
    return data


# --- image folders ---------------------------------------------------------------------------
@DATASETS.register("folder")
def read_folder(arg: str, cfg: DataConfig) -> ImageData:
    root = _existing(arg, "image folder", FOLDER_HINT)
    files = list_image_files(root)
    if not files:
        raise DataError(f"{root}: no images found (looked recursively for .png, .jpg, .jpeg, .webp, .bmp)")
    colour = colour_file(files) if cfg.channels == 1 else None
    resized = resize_note(stored_sizes(files), cfg.resolution)
    if cfg.loader == "stream":  # decoded as training reaches each file
        class_names, labels = _folder_labels(root, files)
        return ImageData(
            LazyImages(files, cfg.resolution, cfg.channels, cfg.on_bad_image, cfg.cache_mb),
            labels,
            class_names,
            str(root),
            colour,
            resized=resized,
        )
    arrays, kept, bad = decode_files(files, cfg.resolution, cfg.channels, cfg.on_bad_image)
    require_mostly_good(len(files), bad)
    images = np.stack(arrays).transpose(0, 3, 1, 2).copy()  # [N, C, R, R]
    class_names, labels = _folder_labels(root, [files[i] for i in kept])
    return ImageData(images, labels, class_names, str(root), colour, resized=resized)


def _folder_labels(root: Path, files: list[Path]) -> tuple[list[str] | None, np.ndarray | None]:
    """Label each file by its first-level subfolder; no labels when all files sit at the top."""
    parts = [f.relative_to(root).parts for f in files]
    if any(len(p) == 1 for p in parts):
        return None, None
    class_names = sorted({p[0] for p in parts})
    index = {name: i for i, name in enumerate(class_names)}
    return class_names, np.array([index[p[0]] for p in parts], dtype=np.int64)


def describe_data(data: Data, spec: str) -> str:
    """One line on what a run trains on, e.g. `mnist5k: 5000 images, 10 classes, 32x32 grayscale`."""
    if isinstance(data, Mixture):
        return f"{spec}: 2-D mixture of {len(data.modes)} Gaussians, sigma {data.sigma:g}, sampled on the fly"
    n, channels, resolution = data.images.shape[:3]
    what = f"{n} files, decoded as training reaches them" if isinstance(data.images, LazyImages) else f"{n} images"
    classes = "unlabelled" if data.labels is None else f"{len(np.unique(data.labels))} classes"
    line = f"{spec}: {what}, {classes}, {resolution}x{resolution} {'grayscale' if channels == 1 else 'colour'}"
    return line + (f" ({data.resized})" if data.resized else "")


def with_classes(cfg: TrainConfig, data: Data) -> TrainConfig:
    """`cfg` with model.n_classes and data.class_names filled in from the data's labels, for a
    conditional model (a copy; an unconditional config is returned as it is). A DataError when the
    data has no labels, or a class index the config's n_classes cannot hold."""
    if cfg.data.clusters:
        return _with_clusters(cfg, data)
    if not cfg.model.conditional:
        return cfg
    if isinstance(data, Mixture) or data.labels is None:
        raise DataError(
            f"{cfg.data.spec}: model.conditional=true needs labelled data (class subfolders, mnist5k, "
            "mnist:DIR, cifar10:DIR, or an npz with a `labels` array); this data has none"
        )
    found = int(data.labels.max()) + 1
    names = list(cfg.data.class_names or data.class_names or [str(i) for i in range(found)])
    n = cfg.model.n_classes or len(names)
    if found > n or len(names) != n:
        raise DataError(
            f"{cfg.data.spec}: labels run to class index {found - 1} and there are {len(names)} class names, "
            f"but model.n_classes is {n}; set model.n_classes={max(found, len(names))} (or 0: from the data)"
        )
    out = copy.deepcopy(cfg)
    out.model.n_classes, out.data.class_names = n, names
    return out


def cluster_names(k: int) -> list[str]:
    """The class names of a self-conditioned run's k clusters: c0, c1, ..."""
    return [f"c{i}" for i in range(k)]


def _with_clusters(cfg: TrainConfig, data: Data) -> TrainConfig:
    """A self-conditioned run's config: conditional on its k clusters (`hetgan.data.clusters`
    labelled `data`), with their names and shares of the data."""
    k = cfg.data.clusters
    if isinstance(data, Mixture):
        assert data.centres is not None, "a self-conditioned run clusters its data before it starts"
        weights = list(data.centre_weights)
    else:
        assert data.labels is not None, "a self-conditioned run clusters its data before it starts"
        weights = [round(float(c) / len(data.labels), 6) for c in np.bincount(data.labels, minlength=k)]
    out = copy.deepcopy(cfg)
    out.model.conditional, out.model.n_classes = True, k
    out.data.class_names, out.data.class_weights = cluster_names(k), weights
    return out


def colour_warning(data: Data) -> str | None:
    """What to tell a user whose colour data a run reads in grayscale (None if it does not)."""
    item = getattr(data, "colour_item", None)
    if item is None:
        return None
    return (
        f"{item} is stored in colour, but data.channels=1 trains in grayscale; "
        "pass --set data.channels=3 to train in colour"
    )


# --- 2-D Gaussian mixtures -------------------------------------------------------------------
@DATASETS.register("ring8")
def ring8(arg: str, cfg: DataConfig) -> Mixture:
    angles = 2 * np.pi * np.arange(8) / 8
    modes = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    return Mixture("ring8", modes, 0.01)


@DATASETS.register("grid25")
def grid25(arg: str, cfg: DataConfig) -> Mixture:
    axis = np.array([-4, -2, 0, 2, 4], dtype=np.float32)
    modes = np.stack(np.meshgrid(axis, axis, indexing="ij"), axis=-1).reshape(-1, 2)
    return Mixture("grid25", modes, 0.05)


FOLDER_HINT = "give a folder of PNG/JPEG/WebP/BMP images (subfolders name classes): --data folder:DIR"


def _existing(arg: str, what: str, fix: str) -> Path:
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataError(f"{path}: {what} does not exist; {fix}")
    return path


def check_spec(cfg: DataConfig) -> list[tuple[str, str]]:
    """Decode every item of a dataset; return [(file, reason)] for each bad one."""
    return inspect_spec(cfg)[0]


@dataclass(frozen=True)
class DataCheck:
    """What `check_data` found: each bad item (file, reason) and what the good ones are."""

    spec: str
    bad: list[tuple[str, str]]
    described: str | None

    def summary(self) -> str:
        lines = [f"BAD {where}: {reason.removeprefix(f'{where}: ')}" for where, reason in self.bad]
        if self.described:
            lines.append(self.described + (" (the good items)" if self.bad else ""))
        lines.append(f"{self.spec}: {'no problems found' if not self.bad else f'{len(self.bad)} bad item(s)'}")
        return "\n".join(lines)


def check_data(spec: str, resolution: int = 32, channels: int = 1) -> DataCheck:
    """Decode every item of a dataset and report each bad file (`hetgan data check`).

    Example:
        >>> print(hetgan.check_data("folder:photos/", resolution=64, channels=3).summary())
    """
    bad, described = inspect_spec(DataConfig(spec=spec, resolution=resolution, channels=channels))
    return DataCheck(spec, bad, described)


def inspect_spec(cfg: DataConfig) -> tuple[list[tuple[str, str]], str | None]:
    """Decode every item of a dataset: [(file, reason)] for each bad one, and the line a run's log
    gives for what it trains on (`describe_data`, over the good items; None if nothing loads)."""
    name, arg = parse_spec(cfg.spec)
    if name == "folder":
        root = _existing(arg, "image folder", FOLDER_HINT)
        files = list_image_files(root)
        if not files:
            return [(arg, "no images found")], None
        arrays, kept, bad = decode_files(
            files, cfg.resolution, cfg.channels, "skip", warn=False
        )  # reported by the caller
        if not arrays:
            return [(str(path), reason) for path, reason in bad], None
        class_names, labels = _folder_labels(root, [files[i] for i in kept])
        images = np.stack(arrays[:1]).transpose(0, 3, 1, 2)  # one item gives the shape
        data = ImageData(
            np.broadcast_to(images, (len(arrays), *images.shape[1:])),
            labels,
            class_names,
            str(root),
            resized=resize_note(stored_sizes(files), cfg.resolution),
        )
        return [(str(path), reason) for path, reason in bad], describe_data(data, cfg.spec)
    try:
        data = load_data(cfg)
    except DataError as e:
        return [(arg or name, str(e))], None
    return [], describe_data(data, cfg.spec)
