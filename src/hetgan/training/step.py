"""What one training step reports: its losses and which phases it skipped as non-finite."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class StepResult:
    # Last D/G losses and D outputs, 0-dim tensors until read (reading one waits for the device).
    losses: dict[str, torch.Tensor | float] = field(default_factory=dict)
    # Per phase ("D", "G"): whether its loss was non-finite, so that it was skipped. A bool, or a
    # bool tensor when the skip was decided on the device.
    nonfinite: dict[str, bool | torch.Tensor] = field(default_factory=dict)

    @property
    def skipped(self) -> list[str]:
        return [phase for phase, bad in self.nonfinite.items() if bool(bad)]

    def floats(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.losses.items()}
