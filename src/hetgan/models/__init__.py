"""Network families, built only from the config. Each family file registers a builder
`(model_cfg, shape, pack) -> (G, D)` where `shape` is one sample's shape ([C, H, W] or [2]) and
D takes `pack` samples stacked along its first feature axis (PacGAN) and returns logits [B]."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from hetgan.config import TrainConfig
from hetgan.data.sources import is_mixture_spec
from hetgan.errors import ConfigError
from hetgan.registry import Registry

Builder = Callable[..., tuple[nn.Module, nn.Module]]
MODELS: Registry[Builder] = Registry("model")

# Registration happens on import of each family file.
from hetgan.models import dcgan, maxout, mlp, resnet  # noqa: E402,F401


def sample_shape(cfg: TrainConfig) -> tuple[int, ...]:
    """One sample's shape: (2,) for 2-D mixtures, (C, H, W) for images."""
    if is_mixture_spec(cfg.data.spec):
        return (2,)
    return (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)


def build_models(cfg: TrainConfig) -> tuple[nn.Module, nn.Module]:
    """(G, D) for `cfg`; a conditional config must have its model.n_classes set (a run sets it
    from its data: `hetgan.data.with_classes`)."""
    if cfg.model.conditional and cfg.model.n_classes < 1:
        raise ConfigError(
            "model.conditional=true needs model.n_classes, the number of classes: a run sets it from its "
            "data's labels; for a network built by hand pass --set model.n_classes=N"
        )
    builder = MODELS.get(cfg.model.arch)
    return builder(cfg.model, sample_shape(cfg), cfg.loss.pack)
