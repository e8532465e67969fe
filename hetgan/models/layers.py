"""Primitives shared by the network families."""

from __future__ import annotations

import math

from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from hetgan.errors import ConfigError


def dcgan_init(module: nn.Module) -> None:
    """Weights N(0, 0.02) and BatchNorm scale N(1, 0.02), as in Radford et al. 2016."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def image_shape(shape: tuple[int, ...], family: str, resolutions: tuple[int, ...]) -> tuple[int, int]:
    """Check a [C, H, W] sample shape against what a conv family supports; returns (C, R)."""
    if len(shape) != 3:
        raise ConfigError(
            f"model {family!r} generates images but the data is {shape}-shaped points; "
            "use --set model.arch=mlp or model.arch=maxout for 2-D data"
        )
    channels, height, width = shape
    if height != width or height not in resolutions:
        raise ConfigError(
            f"model {family!r} supports resolutions {list(resolutions)}, got {height}x{width}; "
            f"pass --set data.resolution={resolutions[0]}"
        )
    return channels, height


def log2_int(n: int) -> int:
    return int(round(math.log2(n)))


def batch_coupled(net: nn.Module) -> list[str]:
    """The layers of `net` (as "name (Type)") whose output for one sample depends on what else
    goes through the same forward: BatchNorm in training mode normalises by the batch's statistics,
    and spectral norm runs a step of power iteration on each forward, so one forward over a joint
    batch computes something else than two forwards over its halves."""
    found = []
    for name, m in net.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            found.append(f"{name} ({type(m).__name__}: the batch's statistics)")
        elif parametrize.is_parametrized(m) and any(
            isinstance(p, _SpectralNorm) for plist in m.parametrizations.values() for p in plist
        ):
            found.append(f"{name} (spectral norm: a power-iteration step per forward)")
    return found
