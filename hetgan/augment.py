"""Differentiable augmentation for small datasets (DiffAugment, Zhao et al. 2020).

D sees every image, real or generated, through the same random, differentiable transforms, so it
cannot memorise a few thousand training images and G still gets gradients through them. All
randomness comes from the run's checkpointed generator, so resumed runs stay bit-exact; it is drawn
for the global batch and a data-parallel rank keeps its part (`hetgan.shard`), so the images a
rank sees are transformed as they would be in one process.
"""

from __future__ import annotations

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
    x: torch.Tensor, policy: tuple[str, ...], gen: torch.Generator, shard: Shard = WHOLE, segments: int = 1
) -> torch.Tensor:
    """Apply each transform of `policy` to images [B, C, H, W] (this rank's part of a global batch
    of `segments` equal parts, see Shard.part); other shapes pass through."""
    if x.dim() != 4:
        return x
    draw = Draw(gen, shard, segments)
    for name in policy:
        x = translation(x, draw) if name == "translation" else cutout(x, draw)
    return x


class Draw:
    """Integers drawn per image of the global batch from the run's generator; this rank's part."""

    def __init__(self, gen: torch.Generator, shard: Shard = WHOLE, segments: int = 1) -> None:
        self.gen, self.shard, self.segments = gen, shard, segments

    def randint(self, low: int, high: int, B: int, device: torch.device) -> torch.Tensor:
        """[B, 1, 1] integers in [low, high) on `device`, for this rank's B images."""
        g = self.gen
        values = torch.randint(low, high, (B * self.shard.world, 1, 1), generator=g, device=g.device)
        return self.shard.part(values, self.segments).to(device)


def translation(x: torch.Tensor, draw: Draw, ratio: float = 0.125) -> torch.Tensor:
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


def cutout(x: torch.Tensor, draw: Draw, ratio: float = 0.5) -> torch.Tensor:
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
