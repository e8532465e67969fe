"""TensorBoard logging of a run (`--set train.tensorboard=true`): every metrics record's numbers
as scalars (`train/...`, `eval/...`) and every sample grid as an image, in RUN_DIR/tensorboard,
with the standard `torch.utils.tensorboard.SummaryWriter`. `tensorboard --logdir runs/` shows
them. The tensorboard package is optional: pip install 'hetgan[tensorboard]'."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from hetgan.errors import HetganError

SKIPPED = ("step", "kimg", "eval")


def summary_writer():
    """torch's SummaryWriter, or an error naming the install: a run checks this in its set-up,
    so a missing package leaves no run directory behind."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise HetganError(
            "train.tensorboard=true needs the package 'tensorboard', which is not installed; "
            "pip install 'hetgan[tensorboard]', or --set train.tensorboard=false"
        ) from None
    return SummaryWriter


class Board:
    """A run's SummaryWriter, or nothing when the run does not ask for one."""

    def __init__(self, run_dir: Path, enabled: bool, step: int = 0) -> None:
        self.writer = None
        if enabled:
            # A resumed run drops what was logged after its checkpoint (steps from step + 1 on: the
            # checkpoint's own step is done, and its records stay), which it is about to redo.
            self.writer = summary_writer()(str(run_dir / "tensorboard"), purge_step=step + 1 if step else None)

    def record(self, record: dict) -> None:
        if self.writer is None:
            return
        section = "eval" if record.get("eval") else "train"
        for key, value in record.items():
            if key not in SKIPPED and isinstance(value, int | float) and math.isfinite(value):
                self.writer.add_scalar(f"{section}/{key}", value, record["step"])

    def grid(self, samples: torch.Tensor, step: int) -> None:
        """A sample grid (images only: 2-D points are in the run's scatter plots)."""
        if self.writer is None or samples.ndim != 4:
            return
        from hetgan.sample_files import grid_image

        image = np.asarray(grid_image(samples))
        self.writer.add_image("samples", image if image.ndim == 3 else image[:, :, None], step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
