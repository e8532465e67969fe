"""Training: the state and one step (trainer.py), the loop and `train` (loop.py), the objective of a
distilled student (distill.py), checkpoints and run directories, and data parallelism
(distributed.py). `hetgan.train` is the entry point."""
