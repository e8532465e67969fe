"""GAN objectives. A loss object owns its objective and regularisers; the loop only schedules
the D and G phases (as in stylegan2-ada's `accumulate_gradients`).

Every loss works on D's raw logits in a numerically stable form (softplus, not log(sigmoid)).
`d_loss` returns (scalar, stats) where stats are detached per-batch means for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hetgan.augment import AdaptiveAugment, augment, parse_policy
from hetgan.config import LossConfig
from hetgan.registry import Registry
from hetgan.shard import WHOLE, Shard

Stats = dict[str, torch.Tensor]


def pack(x: torch.Tensor, m: int) -> torch.Tensor:
    """PacGAN packing (Lin et al. 2018): [B, F, ...] -> [B/m, m*F, ...], m samples per judgement."""
    if m == 1:
        return x
    return x.reshape(len(x) // m, m * x.shape[1], *x.shape[2:])


class GANLoss:
    """Base class: packing, R1 and the bookkeeping every objective shares."""

    def __init__(self, cfg: LossConfig, generator: torch.Generator, joint: bool = False, shard: Shard = WHOLE) -> None:
        self.pack = cfg.pack
        self.n_critic = cfg.n_critic
        self.r1_gamma = cfg.r1_gamma
        self.generator = generator  # the run's RNG, checkpointed, for any randomness in a loss
        self.augment = parse_policy(cfg.augment)
        self.ada = AdaptiveAugment(cfg.ada_target, cfg.ada_kimg, cfg.ada_interval) if cfg.ada_target else None
        self.joint = joint  # D's phase judges real and fake in one forward (accel.batch_layout)
        self.shard = shard  # this rank's part of the global batch: random draws are made for all of it
        self.trains_d = True  # D has a phase (not so for a student distilled without D)

    def logits(self, D: nn.Module, x: torch.Tensor, augmented: bool = True, parts: int = 1) -> torch.Tensor:
        """D's logits for x (`parts` equal parts, as Shard.part has them), seen through the
        augmentation policy (unless `augmented` is False) and packed."""
        if augmented:
            x = augment(x, self.augment, self.generator, self.shard, parts)
            x = self.ada(x, self.generator, self.shard, parts) if self.ada else x
        logits = D(pack(x, self.pack))
        # Objectives and penalties in fp32 (or float64) whatever precision D ran in.
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def judge(
        self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor, augmented: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """D's logits for the real and the fake batch: two forwards, or with `joint` one forward
        over both (fewer, larger products; the augmentation draws for both at once)."""
        if not self.joint:
            return self.logits(D, real, augmented), self.logits(D, fake, augmented)
        both = self.logits(D, torch.cat([real, fake]), augmented, parts=2)
        n = len(real) // self.pack  # judgements of real samples; a pack never mixes the two
        return both[:n], both[n:]

    def d_loss(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        if self.r1_gamma > 0:
            real = real.detach().requires_grad_(True)
        real_logits, fake_logits = self.judge(D, real, fake.detach())
        if self.ada:
            self.ada.observe(real_logits)
        loss = self.d_objective(real_logits, fake_logits)
        stats = {
            "d_real": real_logits.detach().mean(),
            "d_fake": fake_logits.detach().mean(),
            # Share of judgements D gets right (real > 0 > fake): near 1 for long = D has won.
            "d_acc": ((real_logits.detach() > 0).float().mean() + (fake_logits.detach() < 0).float().mean()) / 2,
        }
        if self.r1_gamma > 0:
            penalty = self.r1_penalty(real, real_logits)
            loss = loss + self.r1_gamma / 2 * penalty
            stats["r1"] = penalty.detach()
        return loss, stats

    def g_loss(
        self, D: nn.Module, fake: torch.Tensor, z: torch.Tensor | None = None, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Stats]:
        """G's loss for `fake`, made from `z` and labels `y` (which a distillation loss also gives its
        teacher); a conditional D comes with the labels bound (`with_labels`)."""
        return self.g_objective(self.logits(D, fake)), {}

    def d_objective(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def g_objective(self, fake_logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def r1_penalty(real: torch.Tensor, real_logits: torch.Tensor) -> torch.Tensor:
        """E ||grad_x D(x)||^2 on real data (Mescheder et al. 2018)."""
        (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
        return grad.square().flatten(1).sum(1).mean()


LOSSES: Registry[type[GANLoss]] = Registry("loss")


@LOSSES.register("bce")
class NonSaturatingLoss(GANLoss):
    """Non-saturating GAN loss (Goodfellow et al. 2014): softplus form of BCE with logits."""

    def d_objective(self, real_logits, fake_logits):
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()

    def g_objective(self, fake_logits):
        return F.softplus(-fake_logits).mean()


@LOSSES.register("hinge")
class HingeLoss(GANLoss):
    """Hinge loss (Lim & Ye 2017; Miyato et al. 2018)."""

    def d_objective(self, real_logits, fake_logits):
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()

    def g_objective(self, fake_logits):
        return -fake_logits.mean()


@LOSSES.register("wgan-gp")
class WGANGPLoss(GANLoss):
    """Wasserstein loss with gradient penalty on interpolates (Gulrajani et al. 2017)."""

    def __init__(self, cfg: LossConfig, generator: torch.Generator, joint: bool = False, shard: Shard = WHOLE) -> None:
        super().__init__(cfg, generator, joint, shard)
        self.gp_lambda = cfg.gp_lambda

    def d_loss(self, D, real, fake):
        loss, stats = super().d_loss(D, real, fake)
        penalty = self.gradient_penalty(D, real.detach(), fake.detach())
        stats["gp"] = penalty.detach()
        return loss + self.gp_lambda * penalty, stats

    def d_objective(self, real_logits, fake_logits):
        return fake_logits.mean() - real_logits.mean()

    def g_objective(self, fake_logits):
        return -fake_logits.mean()

    def gradient_penalty(self, D: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        # One mixing weight per packed judgement, so a pack mixes consistently.
        n = len(real) // self.pack
        eps = torch.rand(n * self.shard.world, generator=self.generator, device=self.generator.device)
        eps = self.shard.part(eps)
        # Drawn where the generator is (G's input device), used where D is.
        eps = eps.repeat_interleave(self.pack).view(-1, *([1] * (real.dim() - 1))).to(real.device, real.dtype)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.logits(D, mixed).sum(), mixed, create_graph=True)
        grad = pack(grad, self.pack).flatten(1)  # norm over everything D judged at once
        return (grad.norm(2, dim=1) - 1).square().mean()


def build_loss(cfg: LossConfig, generator: torch.Generator, joint: bool = False, shard: Shard = WHOLE) -> GANLoss:
    return LOSSES.get(cfg.name)(cfg, generator, joint, shard)
