"""hetgan: train, evaluate, compress and deploy GANs on heterogeneous hardware."""

__version__ = "0.1.0"

from hetgan.artifact import Generator, load_generator  # noqa: E402
from hetgan.bench.bench import run_bench  # noqa: E402
from hetgan.bench.tune import autotune  # noqa: E402
from hetgan.config import TrainConfig  # noqa: E402
from hetgan.eval.score import evaluate  # noqa: E402
from hetgan.presets import PRESETS, get_preset  # noqa: E402
from hetgan.training import Trainer, train  # noqa: E402

__all__ = [
    "PRESETS",
    "Generator",
    "TrainConfig",
    "Trainer",
    "__version__",
    "autotune",
    "evaluate",
    "get_preset",
    "load_generator",
    "run_bench",
    "train",
]
