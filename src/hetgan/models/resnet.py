"""SNGAN-style ResNet G and D (Miyato et al. 2018; the CIFAR-10 architecture at 32 px), 32 to 256 px.

G: linear -> 4x4, an upsampling residual block per doubling (three at 32 px), BN-ReLU-conv -> tanh.
D: an optimized first block, residual blocks that downsample to 8x8, two more at 8x8, global sum
pooling and a linear head, every weight spectrally normalised.

Conditional (model.conditional): G's blocks take their BatchNorm scale and shift from the class,
D adds a projection term (Miyato & Koyama 2018), as the conditional SNGAN does.

Each network is one layer list, `net`, with a residual block as one layer, so a stage spec can put
the blocks on one device and the rest on another (`hetgan layers --preset resnet_cifar10`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetgan.config import ModelConfig
from hetgan.models import MODELS
from hetgan.models.layers import (
    LabelledSequential,
    Projection,
    TakesLabels,
    batch_norm,
    check_labels,
    hidden_widths,
    image_shape,
    labelled,
    log2_int,
    norm,
    spectral_norm,
)

RESOLUTIONS = (32, 64, 128, 256)


class GBlock(TakesLabels, nn.Module):
    """Residual upsampling block on a stream of `ch` channels, `inner` channels between its convs;
    with `n_classes`, its BatchNorms are class-conditional."""

    def __init__(self, ch: int, inner: int | None = None, n_classes: int = 0) -> None:
        super().__init__()
        inner = inner or ch
        self.bn1, self.bn2 = batch_norm(ch, n_classes), batch_norm(inner, n_classes)
        self.conv1 = nn.Conv2d(ch, inner, 3, 1, 1)
        self.conv2 = nn.Conv2d(inner, ch, 3, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.conv1.in_channels}, up=2"

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = F.interpolate(F.relu(norm(self.bn1, x, y)), scale_factor=2)
        h = self.conv2(F.relu(norm(self.bn2, self.conv1(h), y)))
        return h + F.interpolate(x, scale_factor=2)


class DBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.conv1 = spectral_norm(nn.Conv2d(ch_in, ch_out, 3, 1, 1))
        self.conv2 = spectral_norm(nn.Conv2d(ch_out, ch_out, 3, 1, 1))
        learn_skip = ch_in != ch_out or down
        self.skip = spectral_norm(nn.Conv2d(ch_in, ch_out, 1)) if learn_skip else None

    def extra_repr(self) -> str:
        return f"{self.conv1.in_channels}, {self.conv1.out_channels}, down={self.down}, first={self.first}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.first else F.relu(x)  # the first block sees raw pixels
        h = self.conv2(F.relu(self.conv1(h)))
        s = x
        if self.first:
            s = self.skip(F.avg_pool2d(s, 2))  # pool before the 1x1 conv, as SNGAN does
        elif self.skip is not None:
            s = self.skip(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return (F.avg_pool2d(h, 2) if self.down else h) + s


class GlobalSumPool(nn.Module):
    """[B, C, H, W] -> [B, C]: the sum over positions (SNGAN's D pools by summing, not averaging)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=(2, 3))


class Generator(nn.Module):
    """z [B, z_dim] (and y [B] class indices when conditional) -> img [B, C, R, R] in [-1, 1]; `ch`
    channels throughout, or `widths`: [the residual stream's channels, each block's inner channels]
    (a pruned student's)."""

    def __init__(
        self, z_dim: int, ch: int, channels: int, widths: list[int] = (), resolution: int = 32, n_classes: int = 0
    ) -> None:
        super().__init__()
        self.z_dim, self.n_classes = z_dim, n_classes
        n_blocks = log2_int(resolution) - 2  # 4x4 -> resolution
        ch, *inner = hidden_widths(list(widths), [ch] * (1 + n_blocks), "resnet")
        self.net = LabelledSequential(
            nn.Linear(z_dim, 4 * 4 * ch),
            nn.Unflatten(1, (ch, 4, 4)),  # [B, 16 ch] -> [B, ch, 4, 4]
            *(GBlock(ch, n, n_classes) for n in inner),
            nn.BatchNorm2d(ch),
            nn.ReLU(),
            nn.Conv2d(ch, channels, 3, 1, 1),
            nn.Tanh(),
        )
        self.register_load_state_dict_pre_hook(rename_keys({"linear.": "net.0.", "blocks.": 2, "out.": 5}))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "resnet G")
        return labelled(self.net, z, y)


class Discriminator(nn.Module):
    """img [B, C*pack, R, R] (and y [B] when conditional) -> logits [B]."""

    def __init__(self, ch: int, in_channels: int, resolution: int = 32, n_classes: int = 0) -> None:
        super().__init__()
        self.n_classes = n_classes
        n_down = log2_int(resolution) - 3  # to 8x8
        self.net = nn.Sequential(
            DBlock(in_channels, ch, down=True, first=True),
            *(DBlock(ch, ch, down=True) for _ in range(n_down - 1)),
            DBlock(ch, ch, down=False),
            DBlock(ch, ch, down=False),
            nn.ReLU(),
            GlobalSumPool(),  # [B, ch, 8, 8] -> [B, ch]
            spectral_norm(nn.Linear(ch, 1)),
        )
        self.projection = Projection(n_classes, ch, spectral=True) if n_classes else None
        self.register_load_state_dict_pre_hook(rename_keys({"blocks.": 0, "head.": "net.6."}))

    def forward(self, img: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        check_labels(y, self.n_classes, "resnet D")
        if self.projection is None:
            return self.net(img).flatten()  # [B, 1] -> [B]
        h = self.net[:-1](img)  # [B, ch]
        return self.net[-1](h).flatten() + self.projection(h, y)


def rename_keys(renames: dict[str, str | int]):
    """A load_state_dict pre-hook that reads checkpoints and artifacts written before the resnet
    networks became one layer list (hetgan up to its thirteenth session kept their parts apart:
    `linear`, `blocks`, `out`, `head`). An old prefix maps to a new one, or to the offset of an old
    numbered Sequential inside `net` ("blocks.1." -> "net.3." for offset 2). The layers kept their
    order, so optimiser states, which follow parameter order, load as they are."""

    def hook(module: nn.Module, state_dict: dict, prefix: str, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix) :]
            old = next((old for old in renames if local.startswith(old)), None)
            if old is None:
                continue
            target, rest = renames[old], local[len(old) :]
            if isinstance(target, int):  # "1.conv1.weight" -> "net.{1 + offset}.conv1.weight"
                index, _, rest = rest.partition(".")
                target = f"net.{int(index) + target}."
            state_dict[prefix + target + rest] = state_dict.pop(key)

    return hook


@MODELS.register("resnet")
def build(cfg: ModelConfig, shape: tuple[int, ...], pack: int) -> tuple[nn.Module, nn.Module]:
    channels, resolution = image_shape(shape, "resnet", RESOLUTIONS)
    G = Generator(cfg.z_dim, cfg.width * 2, channels, cfg.g_widths, resolution, cfg.n_classes)
    D = Discriminator(cfg.width, channels * pack, resolution, cfg.n_classes)
    return G, D
