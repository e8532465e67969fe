"""Differentiable augmentation for small datasets (DiffAugment, Zhao et al. 2020).

D sees every image, real or generated, through the same random, differentiable transforms, so it
cannot memorise a few thousand training images and G still gets gradients through them. All
randomness comes from the run's checkpointed generator, so resumed runs stay bit-exact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hetgan.errors import ConfigError

POLICIES = ("translation", "cutout")


def parse_policy(text: str) -> tuple[str, ...]:
    """'translation,cutout' -> ('translation', 'cutout'); '' -> ()."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ConfigError(f"unknown augmentation {unknown}; valid: {', '.join(POLICIES)} (comma-separated)")
    return names


def augment(x: torch.Tensor, policy: tuple[str, ...], gen: torch.Generator) -> torch.Tensor:
    """Apply each transform of `policy` to images [B, C, H, W]; other shapes pass through."""
    if x.dim() != 4:
        return x
    for name in policy:
        x = translation(x, gen) if name == "translation" else cutout(x, gen)
    return x


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with -1 (black)."""
    B, C, H, W = x.shape
    sh, sw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (B, 1, 1), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(-sw, sw + 1, (B, 1, 1), generator=gen, device=gen.device).to(x.device)
    rows = torch.arange(H, device=x.device).view(1, H, 1) + dy + sh  # [B, H, 1] into the padded image
    cols = torch.arange(W, device=x.device).view(1, 1, W) + dx + sw  # [B, 1, W]
    padded = F.pad(x, [sw, sw, sh, sh], value=-1.0)
    batch = torch.arange(B, device=x.device).view(B, 1, 1)
    return padded[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous(memory_format=_format(x))  # [B, C, H, W]


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    """Set one random square of `ratio` of the size per image to 0 (mid grey)."""
    B, C, H, W = x.shape
    ch, cw = int(H * ratio + 0.5), int(W * ratio + 0.5)
    cy = torch.randint(0, H + (1 - ch % 2), (B, 1, 1), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, W + (1 - cw % 2), (B, 1, 1), generator=gen, device=gen.device).to(x.device)
    top, left = cy - ch // 2, cx - cw // 2  # the square may hang over the border
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # [B, H, W]
    return x * (~inside).unsqueeze(1).to(x.dtype)


def _format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
