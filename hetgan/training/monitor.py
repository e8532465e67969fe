"""Watching a run: metrics during training (best checkpoint kept by FID) and alarms for mode
collapse, a discriminator that has won, and losses that blow up.

Nothing here touches the training state: evaluation samples a recalibrated copy of G_ema with
its own seed, so a run with monitoring computes exactly the same weights as one without.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from hetgan.artifact import Generator, recalibrated_copy, save_generator
from hetgan.data import Mixture
from hetgan.eval.metrics import mean_pairwise_distance
from hetgan.fileio import atomic_write_bytes, strict_json
from hetgan.placement import output_device
from hetgan.training.checkpoint import save_checkpoint
from hetgan.training.trainer import Trainer

log = logging.getLogger("hetgan")

COLLAPSE_RATIO = 0.1  # sample spread below this share of the data's spread: G ignores z
D_WON_ACCURACY = 0.99  # D right on this share of judgements ...
D_WON_PATIENCE = 5  # ... for this many log records in a row
BLOWUP_FACTOR = 50.0  # |loss| this many times its early typical size


def spread(x: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between samples (flattened, on the CPU)."""
    return mean_pairwise_distance(x.detach().cpu().flatten(1).numpy())


def improves(value: float, best: float | None) -> bool:
    """Whether a score (lower is better) beats the best so far: a NaN never does, and any number
    beats a NaN best (a comparison with NaN is always false, so one would stay best for good)."""
    if math.isnan(value):
        return False
    return best is None or math.isnan(best) or value < best


def evaluator_for(trainer: Trainer):
    """The evaluator of `--eval-every`, on the trainer's data (not decoded again) and where G's
    samples come out (its last stage). Built before a run begins, so that data with no feature
    network is an error then, not at the first evaluation."""
    from hetgan.eval.score import Evaluator  # late: eval imports training-side modules

    device = output_device(trainer.G_ema, trainer.g_device)
    return Evaluator(trainer.cfg, metrics=("fid", "pr", "dc", "classes"), device=device, data=trainer.data)


class Monitor:
    def __init__(self, trainer: Trainer, run_dir: Path, evaluator=None) -> None:
        self.trainer, self.run_dir = trainer, run_dir
        self.alarms: list[str] = []
        self.d_won_streak = 0
        self.loss_scale: list[float] = []
        self.best_path = run_dir / "best.json"
        self.best = json.loads(self.best_path.read_text()) if self.best_path.exists() else None
        if self.best and self.best[self.best["metric"]] is None:  # null: inf, as NaN is never best
            self.best[self.best["metric"]] = math.inf
        self._evaluator = evaluator
        self.real_spread = spread(self._real_reference())

    def _real_reference(self) -> torch.Tensor:
        if isinstance(self.trainer.data, Mixture):
            g = torch.Generator().manual_seed(0)
            m = torch.from_numpy(self.trainer.data.modes)
            idx = torch.randint(len(m), (256,), generator=g)
            return m[idx] + torch.randn(256, 2, generator=g) * self.trainer.data.sigma
        return torch.from_numpy(self.trainer.data.images[:256]).float().div(127.5).sub(1)

    # --- alarms -------------------------------------------------------------------------------
    def warn(self, what: str) -> None:
        t = self.trainer
        last = f"step-{t.saved_step:09d}" if t.saved_step >= 0 else "none yet"
        message = f"ALARM at step {t.step_count} ({t.nimg / 1000:.1f} kimg): {what}; last checkpoint: {last}"
        self.alarms.append(message)
        log.warning(message)

    def check_record(self, record: dict) -> None:
        """Called for every metrics record: D has won, losses blowing up."""
        if self.trainer.cfg.loss.name != "wgan-gp" and "d_acc" in record:
            self.d_won_streak = self.d_won_streak + 1 if record["d_acc"] >= D_WON_ACCURACY else 0
            if self.d_won_streak == D_WON_PATIENCE:
                self.warn(
                    f"the discriminator has been right on >= {D_WON_ACCURACY:.0%} of samples for "
                    f"{D_WON_PATIENCE} log intervals: G gets little signal (try lower optim.d_lr or loss.r1_gamma)"
                )
        sizes = [abs(record[k]) for k in ("loss_d", "loss_g") if np.isfinite(record.get(k, 0))]
        if len(self.loss_scale) < 20:
            self.loss_scale.append(max(sizes + [1e-3]))
            return
        typical = float(np.median(self.loss_scale))
        if sizes and max(sizes) > BLOWUP_FACTOR * max(typical, 1.0):
            self.warn(f"losses blew up to {max(sizes):.3g} (typical {typical:.3g})")

    def check_samples(self, samples: torch.Tensor) -> None:
        """Called with each grid's samples: mode collapse shows as samples that barely differ."""
        if self.trainer.step_count == 0 or len(samples) < 2:
            return
        ratio = spread(samples[:256]) / self.real_spread
        if ratio < COLLAPSE_RATIO:
            self.warn(f"mode collapse suspected: samples spread {ratio:.3f}x as much as the data")

    # --- evaluation ---------------------------------------------------------------------------
    def evaluate(self) -> dict:
        cfg, t = self.trainer.cfg, self.trainer
        if self._evaluator is None:
            self._evaluator = evaluator_for(t)
        G = Generator(recalibrated_copy(t.G_ema, cfg.model.z_dim), cfg)
        n = 2500 if isinstance(t.data, Mixture) else cfg.train.eval_n  # PacGAN protocol for 2-D data
        result = self._evaluator(G, n)
        record = {"step": t.step_count, "kimg": round(t.nimg / 1000, 3), "eval": True}
        record.update({k: v for k, v in result.items() if not isinstance(v, list)})
        self._keep_best(record)
        return record

    def _keep_best(self, record: dict) -> None:
        key = "fid" if "fid" in record else "reverse_kl"  # lower is better for both
        if key not in record:
            return
        if improves(record[key], None if self.best is None else self.best[key]):
            t = self.trainer
            tensors, meta = t.state()
            save_checkpoint(self.run_dir / "best", t.step_count, tensors, meta, keep=1)
            save_generator(t.G_ema, t.cfg, self.run_dir / "generator-best.safetensors")
            self.best = {"step": t.step_count, "kimg": record["kimg"], key: record[key], "metric": key}
            atomic_write_bytes(self.best_path, strict_json(self.best, indent=1).encode())
            log.info(
                "new best %s %.4f at step %d: best/ and generator-best.safetensors",
                key,
                record[key],
                t.step_count,
            )
