"""Distillation: a student G trained to match its teacher's G_ema on the same z. A run whose config
sets `distill.teacher` (hetgan compress writes one) trains with this objective; any other trains
with its plain GAN loss (`objective`).

The student's G phase minimises, for each z of the step (Content-Aware GAN Compression and GCC
distil a GAN this way):
- `distill.pixel_weight` x L1 between the student's image and the teacher's,
- `distill.feature_weight` x the squared distance of their features in the data's feature network
  (the bundled digit classifier, or `train.evalnet`: the network hetgan already measures FID in),
- `distill.adversarial_weight` x the run's GAN loss against D, which starts from the teacher run's
  D and is fine-tuned with the student's samples as its fakes (0: no D, no D phases).

Everything else is an ordinary hetgan run: the trainer, the loop, checkpoints, G_ema and resume,
with the student's layer widths in its config (`model.g_widths`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from hetgan.artifact import load_torch_generator
from hetgan.config import TrainConfig
from hetgan.data import is_mixture_spec
from hetgan.errors import CheckpointError, HetganError
from hetgan.eval.score import feature_net_for
from hetgan.fileio import read_safetensors
from hetgan.losses import GANLoss, Stats
from hetgan.training.checkpoint import list_checkpoints, load_latest_checkpoint

log = logging.getLogger("hetgan")


def objective(cfg: TrainConfig, loss: GANLoss, device: torch.device) -> GANLoss | Distillation:
    """What the run's G and D minimise: the GAN `loss`, with the distillation terms added to its G
    phase when the config names a teacher (`distill.teacher`); `device` is where G's output lies."""
    return Distillation(loss, cfg, device) if cfg.distill.teacher else loss


def load_student_start(cfg: TrainConfig, G: nn.Module, D: nn.Module) -> None:
    """A distilled student's starting weights (nothing for any other run): G from `distill.init`
    (a pruned teacher) where given, D from the teacher run's newest checkpoint where the
    adversarial term needs one."""
    if not cfg.distill.teacher:
        return
    if cfg.distill.init:
        tensors, _ = read_safetensors(
            Path(cfg.distill.init), "student's starting weights", "run `hetgan compress` again"
        )
        try:
            G.load_state_dict(tensors)
        except RuntimeError as e:
            raise CheckpointError(
                f"{cfg.distill.init}: the student's starting weights do not fit model.g_widths="
                f"{cfg.model.g_widths} ({str(e).splitlines()[-1].strip()})"
            ) from None
    if cfg.distill.adversarial_weight > 0:
        D.load_state_dict(teacher_discriminator(Path(cfg.distill.teacher)))


def teacher_discriminator(run: Path) -> dict[str, torch.Tensor]:
    """D's weights from the teacher run's newest checkpoint."""
    if not list_checkpoints(run / "checkpoints"):
        raise CheckpointError(
            f"{run}: no checkpoint with a discriminator to fine-tune for the adversarial term (only its "
            "generator artifact); distil without D (--adversarial-weight 0), or compress a run that "
            "kept its checkpoints/"
        )
    _, tensors, _ = load_latest_checkpoint(run / "checkpoints")
    return {k[2:]: v for k, v in tensors.items() if k.startswith("D.")}


class Distillation:
    """The run's GAN loss (`base`) with the student's distillation terms added to its G phase. D's
    phase is the base loss's own, and is left out when the adversarial weight is 0."""

    def __init__(self, base: GANLoss, cfg: TrainConfig, device: torch.device) -> None:
        self.base = base
        self.weights = cfg.distill
        self.teacher = load_torch_generator(Path(cfg.distill.teacher), device)
        if self.teacher.config.model.z_dim != cfg.model.z_dim:
            raise HetganError(
                f"the teacher takes z of {self.teacher.config.model.z_dim} dimensions, the student "
                f"{cfg.model.z_dim}; a student keeps its teacher's model.z_dim"
            )
        self.teacher.requires_grad_(False)
        self.features = feature_network(cfg, device) if cfg.distill.feature_weight > 0 else None
        self.trains_d = cfg.distill.adversarial_weight > 0

    def __getattr__(self, name: str):  # n_critic, pack, d_loss, ...: the base loss's
        return getattr(self.base, name)

    def g_loss(
        self, D: nn.Module, fake: torch.Tensor, z: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Stats]:
        with torch.no_grad():  # the teacher's image for the same z (and class)
            y = y.to(self.teacher.device) if y is not None else None
            target = self.teacher(z.to(self.teacher.device), y).to(fake.device, fake.dtype)
        pixel = (fake - target).abs().mean()
        loss, stats = self.weights.pixel_weight * pixel, {"distill_l1": pixel.detach()}
        if self.features is not None:
            with torch.no_grad():
                want = self.features(target.float())[1]
            feature = (self.features(fake.float())[1] - want).square().mean()
            loss = loss + self.weights.feature_weight * feature
            stats["distill_feature"] = feature.detach()
        if self.trains_d:
            adversarial, _ = self.base.g_loss(D, fake)
            loss = loss + self.weights.adversarial_weight * adversarial
            stats["g_adversarial"] = adversarial.detach()
        return loss, stats


def feature_network(cfg: TrainConfig, device: torch.device) -> nn.Module:
    """The data's feature network, frozen, in eval mode, on `device`."""
    if is_mixture_spec(cfg.data.spec):
        raise HetganError(
            f"a feature loss needs images; {cfg.data.spec!r} is 2-D points: pass --feature-weight 0 "
            "(the pixel and adversarial terms work on points)"
        )
    try:
        net, _ = feature_net_for(cfg, None)
    except HetganError as e:
        raise HetganError(f"{e}; or distil without the feature term: --feature-weight 0") from None
    return net.to(device).eval().requires_grad_(False)
