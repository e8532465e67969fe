"""Decoding image files safely and bringing images to the model's resolution and channels."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from hetgan.errors import DataError

log = logging.getLogger("hetgan")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Refuse images whose header claims more pixels than this before decoding them, so a small
# file cannot expand into gigabytes (a decompression bomb). 40 MP covers any photo we train on.
MAX_IMAGE_PIXELS = 40_000_000
# With --on-bad-image skip, more than this share of bad files stops the run: the data is broken.
MAX_BAD_FRACTION = 0.10


def decode_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """Fully decode one file and return uint8 [resolution, resolution, channels].

    Raises DataError naming the file and the reason (not an image, truncated, too large).
    """
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: image claims {w}x{h} = {w * h} pixels, more than the "
                        f"{MAX_IMAGE_PIXELS} allowed (possible decompression bomb); shrink it first"
                    )
                # load() decodes every pixel: Image.verify() does not notice truncated JPEGs.
                img.load()
                return to_model_array(img, resolution, channels)
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not a readable image (expected PNG, JPEG, WebP or BMP)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: image is truncated or corrupt ({e})") from None


def to_model_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Centre-crop to a square, resize to `resolution` and convert to 1 or 3 channels."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        img = img.crop((left, top, left + side, top + side))
    if side != resolution:
        img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr  # [H, W, C]


def arrays_to_model(images: np.ndarray, resolution: int, channels: int, where: str) -> np.ndarray:
    """Bring a uint8 array [N, H, W] or [N, H, W, C] to [N, C, R, R] at the model's size."""
    if images.dtype != np.uint8:
        raise DataError(f"{where}: images must be uint8, got {images.dtype}; scale to 0..255 first")
    if images.ndim == 3:
        images = images[:, :, :, None]
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise DataError(
            f"{where}: images have shape {images.shape}; expected (N, H, W) or (N, H, W, C) with C in 1, 3, 4"
        )
    if len(images) == 0:
        raise DataError(f"{where}: contains no images")
    n, h, w, c = images.shape
    if h == w == resolution and c == channels:  # anything else is resized (`resize_note` says so)
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
    out = np.empty((n, resolution, resolution, channels), dtype=np.uint8)
    for i in range(n):
        src = images[i, :, :, 0] if c == 1 else images[i]
        out[i] = to_model_array(Image.fromarray(src, mode), resolution, channels)
    return out.transpose(0, 3, 1, 2).copy()  # [N, C, R, R]


# Pillow modes that hold colour. A palette ("P") image may be grey or not: it is left out.
COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"})


def colour_file(files: list[Path], sample: int = 16) -> str | None:
    """The first of up to `sample` files, spread over `files`, that is stored in colour (only
    each header is read); None if none is. Unreadable files are left to the decoder to report."""
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    if img.mode in COLOUR_MODES:
                        return str(path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue
    return None


RESIZE_RULE = "centre-cropped to a square, then resized with Lanczos"


def stored_sizes(files: list[Path], sample: int = 64) -> list[tuple[int, int]]:
    """The distinct (width, height) of up to `sample` files spread over `files` (headers only)."""
    sizes = set()
    for path in files[:: max(1, len(files) // sample)][:sample]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(path) as img:
                    sizes.add(img.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            continue  # the decoder reports it
    return sorted(sizes)


def resize_note(sizes: list[tuple[int, int]], resolution: int) -> str | None:
    """What the data line says of images stored at other sizes than the model's (never a silent
    resize): `stored 28x28, centre-cropped ...`; None when every image is at `resolution`."""
    if not sizes or sizes == [(resolution, resolution)]:
        return None
    shown = ", ".join(f"{w}x{h}" for w, h in sizes[:3]) + (
        f" and {len(sizes) - 3} more sizes" if len(sizes) > 3 else ""
    )
    return f"stored {shown}, {RESIZE_RULE} to {resolution}x{resolution}"


def list_image_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def decode_files(
    files: list[Path], resolution: int, channels: int, on_bad_image: str, workers: int | None = None, warn: bool = True
) -> tuple[list[np.ndarray], list[int], list[tuple[Path, str]]]:
    """Decode many files on `workers` threads (default: one per CPU core; Pillow releases the GIL
    while it decodes and resizes). Returns ([R, R, C] uint8 arrays, indices kept, [(file, reason)]
    bad), in file order whatever the number of workers.

    With on_bad_image='error' the first bad file (in file order) raises; with 'skip' every bad
    file is logged (unless not `warn`) and returned, and the caller decides whether too many are bad
    (`require_mostly_good`).
    """
    arrays, kept, bad = [], [], []
    pool = ThreadPoolExecutor(workers or os.cpu_count() or 1, thread_name_prefix="hetgan-decode")
    try:
        results = pool.map(partial(try_decode, resolution=resolution, channels=channels), files)
        for i, (path, result) in enumerate(zip(files, results, strict=True)):
            if isinstance(result, np.ndarray):
                arrays.append(result)
                kept.append(i)
            elif on_bad_image == "error":
                raise DataError(f"{result}\n  (pass --on-bad-image skip to leave bad files out)") from None
            else:
                if warn:
                    log.warning("skipping bad image %s", result)
                bad.append((path, str(result)))
    finally:
        pool.shutdown(cancel_futures=True)  # after an error, files not yet started are not decoded
    return arrays, kept, bad


def try_decode(path: Path, resolution: int, channels: int) -> np.ndarray | DataError:
    try:
        return decode_image(path, resolution, channels)
    except DataError as e:
        return e


def require_mostly_good(n_files: int, bad: list[tuple[Path, str]]) -> None:
    """Stop when more than MAX_BAD_FRACTION of the files were bad: the data itself is broken."""
    if not bad:
        return
    log.warning("skipped %d bad image(s) of %d", len(bad), n_files)
    if len(bad) > MAX_BAD_FRACTION * n_files:
        raise DataError(
            f"{len(bad)} of {n_files} images are bad (more than {MAX_BAD_FRACTION:.0%} allowed "
            f"with --on-bad-image skip); fix the data. First bad file: {bad[0][1]}"
        )


class LazyImages:
    """Image files seen as a uint8 array [N, C, R, R] that decodes only the items it is asked for,
    on one worker thread per core (`data.loader=stream`, for folders too large to decode into
    memory when the run starts). Index it with an int, a slice or an integer array.

    A bad file raises DataError when it is reached; with on_bad_image='skip' it is logged and the
    next good file in file order stands in for it, the same one every time (so a resumed run
    draws the same pixels), until more than MAX_BAD_FRACTION of the files decoded so far are bad.

    Decoded items are kept, up to `cache_mb` (the first items in file order): a folder that fits
    is decoded once, and later epochs read memory. The pixels are the same either way.
    """

    def __init__(self, files: list[Path], resolution: int, channels: int, on_bad_image: str, cache_mb: int = 0) -> None:
        self.files = files
        self.resolution, self.channels, self.on_bad_image = resolution, channels, on_bad_image
        self.shape = (len(files), channels, resolution, resolution)
        self.dtype = np.dtype(np.uint8)
        self.nbytes = int(np.prod(self.shape))
        self._pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="hetgan-stream")
        self._lock = threading.Lock()
        self._decoded = 0
        self._bad: set[int] = set()
        cached = min(len(files), cache_mb * 2**20 // (channels * resolution * resolution))
        self._cache = np.empty((cached, resolution, resolution, channels), np.uint8)  # [K, R, R, C], as decoded
        self._cached = np.zeros(cached, bool)  # memory is taken as items are decoded, not up front

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        n = len(self.files)
        indices = range(*index.indices(n)) if isinstance(index, slice) else np.asarray(index).reshape(-1)
        if not len(indices):
            return np.empty((0, *self.shape[1:]), dtype=np.uint8)
        if not -n <= min(indices) <= max(indices) < n:
            raise IndexError(f"index out of range for {n} images")
        results = list(self._pool.map(self._decode, (int(i) % n for i in indices)))
        # Stacked as [C, R, R] each: a fresh array with standard strides, as the in-memory datasets
        # have (a transposed view would look channels-last to torch and change the conv algorithm).
        return np.stack([r.transpose(2, 0, 1) for r in results])  # [B, C, R, R]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Decode everything (e.g. to train a feature network on the folder)."""
        return self[:] if dtype is None else self[:].astype(dtype)

    def _decode(self, i: int) -> np.ndarray:
        if i < len(self._cached) and self._cached[i]:
            return self._cache[i]
        result = self._decode_file(i)
        if i < len(self._cached):
            self._cache[i] = result
            self._cached[i] = True  # after the copy: a thread that sees it reads the whole item
        return result

    def _decode_file(self, i: int) -> np.ndarray:
        for j in itertools.chain(range(i, len(self.files)), range(i)):  # the next good file in file order
            result = try_decode(self.files[j], self.resolution, self.channels)
            with self._lock:
                self._decoded += 1
                if isinstance(result, np.ndarray):
                    return result
                self._refuse(j, result)
        raise DataError(f"{self.files[0].parent}: no file decodes")

    def _refuse(self, j: int, error: DataError) -> None:
        if self.on_bad_image == "error":
            raise DataError(
                f"{error}\n  (data.loader=stream decodes files as training reaches them: "
                "`hetgan data check folder:DIR` lists every bad file; remove them and continue with "
                "`hetgan train --resume RUN_DIR`, or pass --on-bad-image skip)"
            )
        if j not in self._bad:
            self._bad.add(j)
            log.warning("skipping bad image %s", error)
        if len(self._bad) > MAX_BAD_FRACTION * max(self._decoded, 50):
            raise DataError(
                f"{len(self._bad)} of the {self._decoded} images decoded so far are bad (more than "
                f"{MAX_BAD_FRACTION:.0%} allowed with --on-bad-image skip); fix the data. Last bad file: {error}"
            )
