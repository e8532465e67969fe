"""Training: the state and one step (trainer.py), the loop (loop.py), checkpoints, run dirs."""

from hetgan.training.loop import train
from hetgan.training.trainer import Trainer

__all__ = ["Trainer", "train"]
