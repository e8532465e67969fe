"""Differentiable augmentation for small datasets (DiffAugment, Zhao et al. 2020).

D sees every image, real or generated, through the same random, differentiable transforms, so it
cannot memorise a few thousand training images and G still gets gradients through them. All
randomness comes from the run's checkpointed generator, so resumed runs stay bit-exact; it is drawn
for the global batch and a data-parallel rank keeps its part (`hetgan.shard`), so the images a
rank sees are transformed as they would be in one process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hetgan.errors import ConfigError
from hetgan.shard import WHOLE, Shard

POLICIES = ("translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> ()."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown augmentation {unknown}; valid: {', '.join(POLICIES)} (comma-separated)")
    return names


def augment(
    x: torch.Tensor, policy: tuple[str, ...], gen: torch.Generator, shard: Shard = WHOLE, parts: int = 1
) -> torch.Tensor:
    """Apply each transform of `policy` to images [B, C, H, W] (this rank's part of a global batch
    of `parts` equal parts, see Shard.part); other shapes pass through."""
    if x.dim() != 4:
        return x
    draw = AugmentDraws(gen, shard, parts)
    for name in policy:
        x = translation(x, draw) if name == "translation" else cutout(x, draw)
    return x


class AugmentDraws:
    """Integers drawn per image of the global batch from the run's generator; this rank's part."""

    def __init__(self, gen: torch.Generator, shard: Shard = WHOLE, parts: int = 1) -> None:
        self.gen, self.shard, self.parts = gen, shard, parts

    def randint(self, low: int, high: int, B: int, device: torch.device) -> torch.Tensor:
        """[B, 1, 1] integers in [low, high) on `device`, for this rank's B images."""
        g = self.gen
        values = torch.randint(low, high, (B * self.shard.world, 1, 1), generator=g, device=g.device)
        return self.shard.part(values, self.parts).to(device)

    def uniform(self, B: int, device: torch.device) -> torch.Tensor:
        """[B, 1, 1] draws from U[0, 1) on `device`, for this rank's B images."""
        g = self.gen
        values = torch.rand(B * self.shard.world, 1, 1, generator=g, device=g.device)
        return self.shard.part(values, self.parts).to(device)

    def normal(self, B: int, device: torch.device) -> torch.Tensor:
        """[B, 1, 1] draws from N(0, 1) on `device`, for this rank's B images."""
        g = self.gen
        values = torch.randn(B * self.shard.world, 1, 1, generator=g, device=g.device)
        return self.shard.part(values, self.parts).to(device)


def translation(x: torch.Tensor, draw: AugmentDraws, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with -1 (black)."""
    B, C, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = draw.randint(-sh, sh + 1, B, x.device)
    dx = draw.randint(-sw, sw + 1, B, x.device)
    rows = torch.arange(H, device=x.device).view(1, H, 1) + dy + sh  # [B, H, 1] into the padded image
    cols = torch.arange(W, device=x.device).view(1, 1, W) + dx + sw  # [B, 1, W]
    padded = F.pad(x, [sw, sw, sh, sh], value=-1.0)
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous(memory_format=_format(x))  # [B, C, H, W]


def cutout(x: torch.Tensor, draw: AugmentDraws, ratio: float = 0.5) -> torch.Tensor:
    """Set one random square of `ratio` of the size per image to 0 (mid grey)."""
    B, C, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = draw.randint(0, H + (1 - ch % 2), B, x.device)
    cx = draw.randint(0, W + (1 - cw % 2), B, x.device)
    top, left = cy - ch // 2, cx - cw // 2  # the square may hang over the border
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


# --- adaptive discriminator augmentation (ADA, Karras et al. 2020) -----------------------------
ADA_TRANSFORMS = ("xflip", "translation", "brightness", "saturation", "contrast", "cutout")


class AdaptiveAugment:
    """ADA: every image D sees goes through each transform of ADA_TRANSFORMS with probability p,
    and p follows D's overfitting: r_t = E[sign(D(real))] over the last `interval` steps (near 1
    when D is sure of every real image) moves p up when above `target` and down when below, by
    at most the batch's images over `speed_kimg` thousand images each adjustment (p 0 -> 1 in
    `speed_kimg` kimg at most), as the paper's heuristic does.

    The transforms are differentiable and leave the data's distribution recoverable for p < 0.8
    (the paper's 'non-leaking' bound); p is part of the training state (a resumed run keeps it)."""

    def __init__(self, target: float, speed_kimg: float, interval: int) -> None:
        self.target, self.speed_kimg, self.interval = target, speed_kimg, interval
        self.p = 0.0
        self.rt: float | None = None  # the last r_t, for the log
        self._signs: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, gen: torch.Generator, shard: Shard = WHOLE, parts: int = 1) -> torch.Tensor:
        """x [B, C, H, W] in [-1, 1] with each transform applied to each image with probability p.
        The draws are made whatever p is, so the run's random stream does not depend on it."""
        if x.dim() != 4:
            return x
        draw = AugmentDraws(gen, shard, parts)
        B = len(x)
        for name in ADA_TRANSFORMS:
            on = (draw.uniform(B, x.device) < self.p).to(x.dtype)  # [B, 1, 1]: 1 where it applies
            x = TRANSFORMS[name](x, draw, on[:, :, :, None])
        return x

    def observe(self, real_logits: torch.Tensor) -> None:
        """D's logits for a real batch (one D phase): their mean sign goes into r_t."""
        self._signs.append(real_logits.detach().float().sign().mean())

    def adjust(self, images_per_step: int, mean: Callable[[float], float] | None = None) -> bool:
        """Every `interval` D phases: move p toward the target; `mean` averages r_t over
        data-parallel ranks, so every rank keeps the same p. Returns whether it adjusted."""
        if len(self._signs) < self.interval:
            return False
        rt = float(torch.stack(self._signs).mean())
        self._signs = []
        self.rt = mean(rt) if mean else rt
        step = images_per_step * self.interval / (self.speed_kimg * 1000)
        self.p = min(max(self.p + step * (1 if self.rt > self.target else -1), 0.0), 1.0)
        return True

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": [float(s) for s in self._signs]}

    def load_state_dict(self, state: dict) -> None:
        self.p = float(state["p"])
        self._signs = [torch.tensor(s) for s in state.get("signs", [])]


def xflip(x: torch.Tensor, draw: AugmentDraws, on: torch.Tensor) -> torch.Tensor:
    return torch.lerp(x, x.flip(3), on)


def ada_translation(x: torch.Tensor, draw: AugmentDraws, on: torch.Tensor) -> torch.Tensor:
    """An integer shift of up to 1/8 of the size (DiffAugment's), where `on`."""
    shifted = translation(x, draw)
    return torch.lerp(x, shifted, on)


def brightness(x: torch.Tensor, draw: AugmentDraws, on: torch.Tensor) -> torch.Tensor:
    """Add b ~ N(0, 0.2) to every pixel (ADA's brightness)."""
    return x + draw.normal(len(x), x.device)[:, :, :, None].to(x.dtype) * 0.2 * on


def contrast(x: torch.Tensor, draw: AugmentDraws, on: torch.Tensor) -> torch.Tensor:
    """Scale around the image's mean by c ~ lognormal(0, 0.5 ln 2)."""
    c = torch.exp2(draw.normal(len(x), x.device)[:, :, :, None].to(x.dtype) * 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return torch.lerp(x, (x - mean) * c + mean, on)


def saturation(x: torch.Tensor, draw: AugmentDraws, on: torch.Tensor) -> torch.Tensor:
    """Scale colour around each pixel's grey by s ~ lognormal(0, ln 2); grayscale images keep theirs."""
    s = torch.exp2(draw.normal(len(x), x.device)[:, :, :, None].to(x.dtype))
    if x.shape[1] != 3:
        return x
    grey = x.mean(dim=1, keepdim=True)
    return torch.lerp(x, (x - grey) * s + grey, on)


def ada_cutout(x: torch.Tensor, draw: AugmentDraws, on: torch.Tensor) -> torch.Tensor:
    return torch.lerp(x, cutout(x, draw), on)


TRANSFORMS = {
    "xflip": xflip,
    "translation": ada_translation,
    "brightness": brightness,
    "saturation": saturation,
    "contrast": contrast,
    "cutout": ada_cutout,
}
