"""Primitives shared by the network families."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


class SpectralNorm(_SpectralNorm):
    """torch's spectral norm (Miyato et al. 2018), with its power iteration outside torch.compile.

    The power iteration updates the u and v buffers in place. Compiled, those updates happen
    inside the graph, which may then save the buffers themselves for backward; a D called twice
    before one backward (D(real), then D(fake)) fails: "modified by an inplace operation". Here
    the iteration always runs eagerly and hands fresh u and v to the (compiled) rest, which never
    sees the buffers in training. In eager mode it computes torch's numbers to the bit, and its
    state_dict keys are torch's.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return super().forward(weight)
        weight_mat = self._reshape_weight_to_matrix(weight)  # [out, in * k * k]
        if self.training:
            u, v = self._power_iteration(weight_mat)
        else:
            u, v = self._u.clone(), self._v.clone()
        sigma = torch.vdot(u, torch.mv(weight_mat, v))
        return weight / sigma

    @torch.compiler.disable
    @torch.no_grad()
    def _power_iteration(self, weight_mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step per forward, as torch does: new u and v, also written to the buffers."""
        u, v = self._u, self._v
        for _ in range(self.n_power_iterations):
            u = F.normalize(torch.mv(weight_mat, v), dim=0, eps=self.eps)
            v = F.normalize(torch.mv(weight_mat.H, u), dim=0, eps=self.eps)
        self._u.copy_(u)
        self._v.copy_(v)
        return u, v


def spectral_norm(module: nn.Conv2d | nn.Linear) -> nn.Module:
    """`module` with its weight divided by its spectral norm (one power iteration per forward in
    training), as torch.nn.utils.parametrizations.spectral_norm does, but safe to compile."""
    parametrize.register_parametrization(module, "weight", SpectralNorm(module.weight, n_power_iterations=1, dim=0))
    return module


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
