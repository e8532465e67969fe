"""Watching a run: metrics during training (best checkpoint kept by FID) and alarms for mode
collapse, a discriminator that has won, and losses that blow up.

Nothing here touches the training state: evaluation samples a recalibrated copy of G_ema with
its own seed, so a run with monitoring computes exactly the same weights as one without.
"""

from __future__ import annotations

import collections
import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from hetgan.artifact import TorchGenerator, save_generator
from hetgan.data import Mixture
from hetgan.eval.metrics import mean_pairwise_distance
from hetgan.fileio import atomic_write_bytes, strict_json
from hetgan.placement import output_device
from hetgan.training.checkpoint import save_checkpoint
from hetgan.training.trainer import Trainer

log = logging.getLogger("hetgan")

COLLAPSE_RATIO = 0.1  # sample spread below this share of the data's spread: G ignores z
# D right on this share of judgements, on average over the last D_WON_WINDOW log records. Each
# record's d_acc is one batch's, so a streak rule (>= 0.99 in 5 records in a row) was broken by
# single batches: the default run's D was right on 96-100 % of its last 20 kimg (0.984, 0.992,
# 1.0, 0.988, 0.992, 0.957, ...) and no alarm came (issue 26). The mean of 6 fires there, at 192
# kimg, and nowhere earlier in that run.
D_WON_ACCURACY = 0.95
D_WON_WINDOW = 6
BLOWUP_FACTOR = 50.0  # |loss| this many times its early typical size


def spread(x: torch.Tensor) -> float:
    """Mean pairwise Euclidean distance between samples (flattened, on the CPU)."""
    return mean_pairwise_distance(x.detach().cpu().flatten(1).numpy())


# What "best" means, as scores compared in turn, each with 1 where lower is better and -1 where
# higher is. 2-D data follows the PacGAN protocol's headline numbers in order: a generator that
# covers more modes beats one with a lower reverse KL, which eight good samples (one per mode)
# out of 2,500 would bring to a perfect 0.
RANKINGS = {
    "fid": (("fid", 1),),
    "modes": (("modes_captured", -1), ("high_quality", -1), ("reverse_kl", 1)),
}


def ranking_for(record: dict) -> str | None:
    return "fid" if "fid" in record else "modes" if "reverse_kl" in record else None


def rank(record: dict, ranking: str) -> tuple[float, ...] | None:
    """A record's place under a ranking, lower is better; None where a score is missing or NaN,
    which never ranks best (every comparison with NaN is false, so one would stay best for good).
    null, how a JSON file stores a score that is not finite (a reverse KL of inf), ranks last."""
    key = []
    for name, sign in RANKINGS[ranking]:
        value = record.get(name, math.nan)
        if value is not None and math.isnan(value):
            return None
        key.append(math.inf if value is None else sign * value)
    return tuple(key)


def improves(key: tuple[float, ...] | None, best: tuple[float, ...] | None) -> bool:
    return key is not None and (best is None or key < best)


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
        self.last_eval: dict | None = None  # the newest evaluation record, for the run's summary
        self.d_acc: collections.deque[float] = collections.deque(maxlen=D_WON_WINDOW)
        self.d_won = False  # alarmed, until the mean falls back below the bar
        self.loss_scale: list[float] = []
        self.best_path = run_dir / "best.json"
        self.best = json.loads(self.best_path.read_text()) if self.best_path.exists() else None
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
            self.d_acc.append(record["d_acc"])
            mean = sum(self.d_acc) / len(self.d_acc)
            won = len(self.d_acc) == D_WON_WINDOW and mean >= D_WON_ACCURACY
            if won and not self.d_won:
                self.warn(
                    f"the discriminator has been right on {mean:.1%} of samples over the last {D_WON_WINDOW} log "
                    "intervals: G gets little signal (try lower optim.d_lr or loss.r1_gamma)"
                )
            self.d_won = won
        sizes = [abs(record[k]) for k in ("loss_d", "loss_g") if k in record and np.isfinite(record[k])]
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
        G = TorchGenerator(t.recalibrated_G_ema(), cfg)
        n = 2500 if isinstance(t.data, Mixture) else cfg.train.eval_n  # PacGAN protocol for 2-D data
        result = self._evaluator(G, n)
        for warning in result.get("warnings", []):  # collapse and missing classes: an alarm, in the summary too
            self.warn(warning)
        record = {"step": t.step_count, "kimg": round(t.nimg / 1000, 3), "eval": True}
        record.update({k: v for k, v in result.items() if not isinstance(v, list)})
        self._keep_best(record)
        self.last_eval = record
        return record

    def _keep_best(self, record: dict) -> None:
        ranking = ranking_for(record)
        if ranking is None:
            return
        # A best.json of another ranking (one written before 2-D runs were ranked by modes) ranks None.
        if improves(rank(record, ranking), None if self.best is None else rank(self.best, ranking)):
            t = self.trainer
            tensors, meta = t.state()
            save_checkpoint(self.run_dir / "best", t.step_count, tensors, meta, keep=1)
            best = self.run_dir / "generator-best.safetensors"
            save_generator(t.recalibrated_G_ema(), t.cfg, best, self.run_dir.name, recalibrated=True)
            scores = {name: record[name] for name, _ in RANKINGS[ranking]}
            self.best = {"step": t.step_count, "kimg": record["kimg"], **scores, "metric": ranking}
            atomic_write_bytes(self.best_path, strict_json(self.best, indent=1).encode())
            log.info(
                "new best at step %d (%s): best/ and generator-best.safetensors",
                t.step_count,
                ", ".join(f"{name} {value:.4g}" for name, value in scores.items()),
            )
