"""Feature networks for evaluation: a small CNN classifier whose penultimate features define
hetgan's FID feature space for a dataset (no downloads possible, so no Inception by default).

`fit_evalnet` trains one on any labelled image dataset with a fixed, stratified held-out split
and records its held-out accuracy beside the weights. The one for the bundled digits ships in the
package (`digits_evalnet.safetensors`, trained by `scripts/train_digits_evalnet.py`): FID in its
features is "FID (digits)".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save as save_safetensors
from torch import nn

from hetgan.accel import without_tf32
from hetgan.config import DataConfig
from hetgan.data.sources import ImageData, load_data
from hetgan.errors import CheckpointError, DataError, HetganError
from hetgan.fileio import atomic_write_bytes, output_path, read_safetensors
from hetgan.placement import resolve_device

log = logging.getLogger("hetgan")
FORMAT = "hetgan.evalnet/1"
DIGITS_EVALNET = "digits_evalnet.safetensors"


@dataclass
class EvalNetConfig:
    channels: int = 1
    resolution: int = 32
    n_classes: int = 10
    width: int = 32
    feature_dim: int = 128
    dataset: str = ""
    class_names: list[str] | None = None
    held_out_accuracy: float | None = None
    held_out_count: int | None = None


class EvalNet(nn.Module):
    """img [B, C, R, R] in [-1, 1] -> (logits [B, n_classes], features [B, feature_dim])."""

    def __init__(self, cfg: EvalNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(True),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(block(cfg.channels, w), block(w, 2 * w), block(2 * w, 4 * w))
        self.features = nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.LazyLinear(cfg.feature_dim), nn.ReLU(True))
        self.head = nn.Linear(cfg.feature_dim, cfg.n_classes)
        self(torch.zeros(1, cfg.channels, cfg.resolution, cfg.resolution))  # materialise LazyLinear

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if img.shape[-1] != self.cfg.resolution:
            img = F.interpolate(img, size=self.cfg.resolution, mode="bilinear", align_corners=False)
        feats = self.features(self.body(img))
        return self.head(feats), feats

    def embed(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Features (float64 [N, feature_dim]) and class probabilities ([N, n_classes])."""
        return embed_in_batches(self, images, batch_size)


class StackedDigits(nn.Module):
    """A digit network applied to each channel of a Stacked MNIST image (the PacGAN and VEEGAN
    protocol): img [B, 3, R, R] in [-1, 1] -> (logits [B, 1000] over the modes 100 * R + 10 * G + B,
    the three channels' features side by side [B, 3 * feature_dim]). A mode's probability is the
    product of its three digits' probabilities, so the argmax is each channel's own digit."""

    def __init__(self, digits: EvalNet) -> None:
        super().__init__()
        self.digits = digits
        acc = digits.cfg.held_out_accuracy
        self.cfg = dataclasses.replace(
            digits.cfg,
            channels=3,
            n_classes=digits.cfg.n_classes**3,
            feature_dim=3 * digits.cfg.feature_dim,
            dataset=f"{digits.cfg.dataset}, stacked in 3 channels",
            class_names=None,
            held_out_accuracy=None if acc is None else acc**3,  # all three digits right
        )

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B = len(img)
        logits, feats = self.digits(img.reshape(B * 3, 1, *img.shape[2:]))  # each channel a digit image
        logp = logits.log_softmax(1).reshape(B, 3, -1)  # [B, 3, 10]
        modes = logp[:, 0, :, None, None] + logp[:, 1, None, :, None] + logp[:, 2, None, None, :]  # [B, 10, 10, 10]
        return modes.flatten(1), feats.reshape(B, -1)

    def embed(self, images: torch.Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Features (float64 [N, 3 * feature_dim]) and mode probabilities ([N, 1000])."""
        return embed_in_batches(self, images, batch_size)


@torch.no_grad()
def embed_in_batches(net: nn.Module, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Run a feature network `img -> (logits, features)` in eval mode over images in batches, on
    the network's device and in full fp32 (no TF32): features as float64 [N, F] and class
    probabilities [N, classes], on the CPU."""
    net.eval()
    device = next(net.parameters()).device
    feats, probs = [], []
    with without_tf32():
        for i in range(0, len(images), batch_size):
            logits, f = net(images[i : i + batch_size].to(device).float())
            feats.append(f.float().cpu().double().numpy())  # MPS has no float64: convert on the CPU
            probs.append(logits.softmax(1).float().cpu().double().numpy())
    return np.concatenate(feats), np.concatenate(probs)


def held_out_split(labels: np.ndarray, per_class: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fixed stratified split: `per_class` random items of every class are held out."""
    rng = np.random.default_rng(seed)
    held = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)])
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def training_split(data: ImageData, held_out_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices of labelled data: `held_out_per_class` items of each class are
    held out, but never more than a fifth of the smallest class, so a small dataset still has most
    of its images to train on. A DataError where there are no labels or a class has one image."""
    if data.labels is None:
        raise DataError(f"{data.source}: evalnet training needs labels (npz labels, class folders, MNIST, CIFAR-10)")
    counts = np.bincount(data.labels)
    smallest = int(np.flatnonzero(counts)[counts[counts > 0].argmin()])
    if counts[smallest] < 2:
        name = data.class_names[smallest] if data.class_names else smallest
        raise DataError(
            f"{data.source}: class {name} has {counts[smallest]} image; every class needs at least 2 "
            "(one to train on, one held out to measure accuracy)"
        )
    per_class = min(held_out_per_class, max(1, int(counts[smallest]) // 5))
    return held_out_split(data.labels, per_class, seed)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 px (pad and crop): digits move, their shapes do not."""
    padded = F.pad(x, (2, 2, 2, 2), value=-1.0)
    dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


def fit_evalnet(
    data: ImageData,
    epochs: int = 20,
    held_out_per_class: int = 50,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
) -> EvalNet:
    """Train a feature network on labelled images, on `device`; its held-out accuracy goes into its
    config. The images stay on the CPU and move to the device a batch at a time. On a CPU the
    network trains channels-last (oneDNN's own layout, faster there) and is returned in the usual
    layout, which safetensors needs."""
    if epochs < 1:
        raise HetganError(f"epochs={epochs}: train for at least 1 epoch")
    train_idx, test_idx = training_split(data, held_out_per_class, seed)
    n_classes = int(data.labels.max()) + 1
    batch_size = min(batch_size, len(train_idx))
    x = torch.from_numpy(np.asarray(data.images)).float().div(127.5).sub(1)  # [N, C, R, R] in [-1, 1]
    y = torch.from_numpy(data.labels)
    torch.manual_seed(seed)
    cfg = EvalNetConfig(
        channels=x.shape[1],
        resolution=x.shape[2],
        n_classes=n_classes,
        dataset=data.source,
        class_names=data.class_names,
    )
    device = resolve_device(str(device))
    layout = torch.channels_last if device.type == "cpu" else torch.contiguous_format
    net = EvalNet(cfg).to(device, memory_format=layout)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(train_idx) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        order = torch.from_numpy(train_idx)[torch.randperm(len(train_idx), generator=gen)]
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            batch = _augment(x[idx], gen).to(device, memory_format=layout)
            loss = F.cross_entropy(net(batch)[0], y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(net, x[test_idx], y[test_idx])
        log.info(
            "evalnet epoch %d/%d: held-out accuracy %.4f (%.0f s)",
            epoch + 1,
            epochs,
            acc,
            time.perf_counter() - start,
        )
    cfg.held_out_accuracy, cfg.held_out_count = acc, len(test_idx)
    if warning := chance_warning(cfg):
        log.warning("%s", warning)
    return net.eval().cpu().to(memory_format=torch.contiguous_format)


def chance_warning(cfg: EvalNetConfig) -> str | None:
    """A warning when the held-out accuracy is within two standard errors of guessing (1 / the
    number of classes: the held-out split has as many items of each class). Such a network has not
    learnt what tells the images apart, and distances in its features (FID, KID, precision and
    recall) say little about them; None for a network that does better."""
    if cfg.held_out_accuracy is None or not cfg.held_out_count:
        return None
    chance = 1 / cfg.n_classes
    bar = chance + 2 * math.sqrt(chance * (1 - chance) / cfg.held_out_count)
    if cfg.held_out_accuracy >= bar:
        return None
    return (
        f"the feature network's held-out accuracy {cfg.held_out_accuracy:.4f} is no better than guessing "
        f"({chance:.4f} for {cfg.n_classes} classes; below {bar:.4f}, two standard errors above it on "
        f"{cfg.held_out_count} held-out items): its features do not tell these images apart, so FID, KID "
        "and precision/recall measured in them mean little. Train it for more epochs (--epochs) or on "
        "more images per class, or give `hetgan eval` Inception weights (--inception)"
    )


@torch.no_grad()
def accuracy(net: EvalNet, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    device = next(net.parameters()).device
    pred = torch.cat([net(x[i : i + 500].to(device))[0].argmax(1).cpu() for i in range(0, len(x), 500)])
    return float((pred == y).float().mean())


def train_evalnet(
    data: str,
    out: str | Path,
    resolution: int = 32,
    channels: int = 1,
    epochs: int = 20,
    on_bad_image: str = "error",
    device: str = "cpu",
) -> EvalNet:
    """Train a feature network for FID and the other metrics on a labelled dataset, and write it to
    `out` (`hetgan evalnet train`); `hetgan.evaluate(..., evalnet=out)` then scores in its features.

    Args:
        data: a labelled data spec: mnist:DIR, cifar10:DIR, folder:DIR (class folders), npz:FILE.
        out: the .safetensors file to write (checked before the training starts).
        resolution: the size images are read at (the generator's).
        channels: 1 (grey) or 3 (RGB).
        epochs: training epochs.
        on_bad_image: "skip" leaves unreadable files out, logged; "error" stops at the first.
        device: where it trains.

    Returns:
        The trained `EvalNet`; its `cfg.held_out_accuracy` on `cfg.held_out_count` items.

    Example:
        >>> net = hetgan.train_evalnet("folder:faces/", "faces-evalnet.safetensors", channels=3)
    """
    path = output_path(out, "--out", "evalnet.safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)  # now, not after minutes of training
    where = resolve_device(device)  # before the data is decoded
    images = load_data(DataConfig(spec=data, resolution=resolution, channels=channels, on_bad_image=on_bad_image))
    if not isinstance(images, ImageData):
        raise HetganError(f"{data}: feature networks are for images, not 2-D points")
    net = fit_evalnet(images, epochs=epochs, device=where)
    save_evalnet(net, path)
    return net


def save_evalnet(net: EvalNet, path: Path) -> Path:
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    metadata = {"format": FORMAT, "config": json.dumps(asdict(net.cfg))}
    atomic_write_bytes(Path(path), save_safetensors(tensors, metadata=metadata))
    return Path(path)


def load_evalnet(path: str | Path | None = None) -> EvalNet:
    """Load a feature network; with no path, the bundled digits network."""
    if path is None:
        ref = resources.files("hetgan.eval").joinpath(DIGITS_EVALNET)
        with resources.as_file(ref) as p:
            return load_evalnet(p)
    path = Path(path)
    fix = "pass a file written by `hetgan evalnet train --out FILE`"
    tensors, metadata = read_safetensors(path, "evalnet file", fix)
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a hetgan evalnet (format {metadata.get('format')!r}, expected {FORMAT!r}); {fix}"
        )
    net = EvalNet(EvalNetConfig(**json.loads(metadata["config"])))
    net.load_state_dict(tensors)
    return net.eval()
