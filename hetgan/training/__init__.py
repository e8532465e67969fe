"""Training: the state and one step (trainer.py), the loop (loop.py), checkpoints, run dirs."""

from hetgan.training.loop import TrainResult, run_training, train
from hetgan.training.trainer import Trainer

__all__ = ["TrainResult", "Trainer", "run_training", "train"]
