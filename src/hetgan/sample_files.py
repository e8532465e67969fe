"""Writing samples: PNG grids, .npz arrays, folders of PNGs, and scatter plots for 2-D data."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hetgan.errors import HetganError
from hetgan.fileio import atomic_write_bytes


def to_uint8(images: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C], `chunk` images at a time, so that the float
    temporaries stay small next to the samples themselves (50,000 RGB 64x64 samples are 2.4 GB)."""
    out = torch.empty(images.shape, dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].detach().float().cpu()
        out[i : i + chunk] = x.clamp(-1, 1).add_(1).mul_(127.5).round_()  # clamp copies: the input stays
    return out.permute(0, 2, 3, 1).numpy()


def as_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, C] images as they are; [N, C, H, W] in [-1, 1] through to_uint8."""
    return images if isinstance(images, np.ndarray) else to_uint8(images)


def sample_uint8(G, n: int, seed: int = 0, truncation: float | None = None, labels=None) -> np.ndarray:
    """n image samples of generator `G` (hetgan.artifact.Generator; of classes `labels`, see
    `SeededGenerator.labels`) as uint8 [N, H, W, C], converted batch by batch: memory for the uint8
    images only, a quarter of n float samples."""
    out = np.empty((n, *G.shape[1:], G.shape[0]), dtype=np.uint8)
    for i, batch in G.sample_batches(n, seed, truncation=truncation, labels=labels):
        out[i : i + len(batch)] = to_uint8(batch)
    return out


def grid_image(images: torch.Tensor | np.ndarray, ncol: int | None = None, pad: int = 2) -> Image.Image:
    """Tile [N, C, H, W] in [-1, 1] (or uint8 [N, H, W, C]) into one image, `ncol` columns
    (default: square-ish)."""
    arr = as_uint8(images)
    n, h, w, c = arr.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    canvas = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + q * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    return Image.fromarray(canvas[:, :, 0] if c == 1 else canvas)


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def scatter_png(points: torch.Tensor, modes: np.ndarray | None, title: str = "") -> bytes:
    """A scatter plot of 2-D samples over the real mixture's modes, as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = points.detach().float().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color="tab:blue", label="generated", zorder=2)
    if modes is not None:
        # hollow rings under the samples, so that samples piled on a mode stay in sight
        ax.scatter(modes[:, 0], modes[:, 1], s=120, marker="o", facecolors="none", edgecolors="tab:red",
                   linewidths=1, label="real modes", zorder=1)  # fmt: skip
        lim = np.abs(modes).max() * 1.5 + 0.5
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def memory_needed(G, n: int, form: str) -> int:
    """Bytes `hetgan sample` holds for n samples of `G` written in `form`: the latent codes
    (float32, drawn at once so that a seed gives the same samples whatever n), the samples (uint8
    images or float32 points) and, for a grid or an .npz, the copy built before it is written."""
    codes = n * G.z_dim * 4
    samples = n * math.prod(G.shape) * (4 if len(G.shape) == 1 else 1)
    return codes + samples * (1 if form == "folder" else 2)


def available_memory() -> int | None:
    """Bytes that can be allocated without swapping (Linux's MemAvailable); None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # in kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(G, n: int, form: str) -> None:
    """Refuse, before sampling, an n whose samples would not fit in this machine's free memory."""
    need, free = memory_needed(G, n, form), available_memory()
    if free is not None and need > free:
        raise HetganError(
            f"--n {n}: {n} samples written as {form} take about {size(need)} of memory (latent codes "
            f"and samples), more than the {size(free)} free on this machine; ask for fewer samples "
            "(runs with other --seed values give more)"
        )


def size(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.2f} MiB"


def output_form(out: Path, text: str) -> str:
    """The form of an --out given as `text`: "folder", "npz" or "png"; anything else is an error."""
    if text.endswith(("/", "\\")):
        return "folder"
    if out.suffix in (".npz", ".png"):
        return out.suffix[1:]
    raise HetganError(f"{out}: unknown output form {out.suffix!r}; use FILE.png (grid), FILE.npz or DIR/ (PNGs)")


def write_walk(frames: torch.Tensor, out: Path, frame_ms: int = 120) -> Path:
    """A latent walk [F, C, H, W] in [-1, 1]: an animated GIF (there and back, looping) for
    `.gif`, a strip of the frames for `.png`."""
    if out.suffix == ".png":
        atomic_write_bytes(out, png_bytes(grid_image(frames, ncol=len(frames))))
        return out
    images = [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in to_uint8(frames)]
    scale = max(1, 128 // images[0].width)  # 32 px digits are hard to see at 1x
    images = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in images]
    loop = images + images[-2:0:-1]  # back again, so the loop has no jump
    buf = io.BytesIO()
    loop[0].save(buf, format="GIF", save_all=True, append_images=loop[1:], duration=frame_ms, loop=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return out


def numbered_pngs(folder: Path) -> list[Path]:
    """The sample files `hetgan sample --out DIR/` writes into a folder: 00000.png, 00001.png, ..."""
    return sorted(p for p in folder.iterdir() if p.suffix == ".png" and p.stem.isdigit() and len(p.stem) >= 5)


def write_samples(
    samples: torch.Tensor | np.ndarray,
    out: str | Path,
    modes: np.ndarray | None = None,
    start: int = 0,
    ncol: int | None = None,
    labels: np.ndarray | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write samples by the form of `out`: `.png` grid (`ncol` columns, default square-ish) or
    scatter, `.npz`, or a folder `dir/`. Images come as [N, C, H, W] in [-1, 1] or as uint8
    [N, H, W, C] (`sample_uint8`).

    With `labels` (int [N], a conditional generator's), an .npz holds `labels` and `class_names`
    too, and a folder is laid out by class, `dir/<class name>/<n>.png`, which `folder:dir` reads
    back with those labels.

    Pass a folder as a string ending in "/" (a Path drops the trailing slash).
    """
    is_points = samples.ndim == 2
    text = str(out)
    out = Path(out)
    form = output_form(out, text)
    if form == "folder":
        if is_points:
            raise HetganError(f"{out}: 2-D samples cannot be written as a folder of PNGs; use .npz or .png")
        folder = Path(text.rstrip("/\\"))
        if labels is None:
            return _write_folder(samples, folder, start)
        for k, name in enumerate(class_names):
            if (labels == k).any():
                _write_folder(samples[np.flatnonzero(labels == k)], folder / name, start)
        return folder
    out.parent.mkdir(parents=True, exist_ok=True)
    if form == "npz":
        buf = io.BytesIO()
        arrays = (
            {} if labels is None else {"labels": np.asarray(labels, np.int64), "class_names": np.array(class_names)}
        )
        if is_points:
            np.savez(buf, points=samples.float().cpu().numpy().astype(np.float32), **arrays)
        else:
            np.savez(buf, images=as_uint8(samples), **arrays)
        atomic_write_bytes(out, buf.getvalue())
    else:
        data = scatter_png(samples, modes) if is_points else png_bytes(grid_image(samples, ncol))
        atomic_write_bytes(out, data)
    return out


def _write_folder(samples: torch.Tensor | np.ndarray, folder: Path, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(start + len(samples))))
    for i, arr in enumerate(as_uint8(samples), start):
        img = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        atomic_write_bytes(folder / f"{i:0{digits}d}.png", png_bytes(img))
    return folder
