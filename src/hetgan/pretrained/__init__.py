"""Generators trained by hetgan and shipped in the package, so that `hetgan serve --pretrained
mnist` answers right after `pip install`, with no training.

Each is a `generator.safetensors` artifact (its config travels inside it, as any run's does) and a
card, `NAME.json`: what it was trained on, the recipe and the command that trained it, its
metrics (and the sha256 of the file they were measured on) and the date.
`scripts/retrain_pretrained.py NAME` trains it again from the card and checks the metrics within
their noise.

    G = hetgan.load_generator("mnist")        # a name, where no file or folder of that name exists
    print(hetgan.pretrained_card("mnist"))    # hetgan pretrained mnist
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hetgan.errors import HetganError

NAMES = ("mnist", "mnist-conditional", "stacked-mnist")


@dataclass(frozen=True)
class Pretrained:
    """One packaged generator and its card (`NAME.json`)."""

    name: str
    path: Path  # the generator.safetensors artifact
    summary: str  # one line: what it draws
    data: str
    recipe: str
    preset: str  # how it was trained: `hetgan train --preset PRESET --seed SEED --set OVERRIDE ...`
    seed: int
    overrides: list[str]
    metrics: dict  # name -> value, as `hetgan eval` computes them (n samples, seed 0)
    noise: dict  # name -> how far a retraining may land from the value (seeds, thread counts, CPUs)
    trained: str  # date and machine
    sha256: str  # of the artifact the metrics were measured on (scripts/retrain_pretrained.py --install)
    n: int = 5000  # samples scored: hetgan eval's default for the data (26,000 for Stacked MNIST)

    @property
    def command(self) -> str:
        """The command that trained it (scripts/retrain_pretrained.py runs it again)."""
        sets = "".join(f" --set {o}" for o in self.overrides)
        return f"hetgan train --preset {self.preset} --seed {self.seed}{sets}"

    def card(self) -> str:
        """The model card as markdown."""
        rows = "\n".join(f"| {k} | {v:g} | {self.noise.get(k, '-')} |" for k, v in self.metrics.items())
        return (
            f"# {self.name}\n\n{self.summary}\n\n"
            f"- **data**: {self.data}\n- **recipe**: {self.recipe}\n- **trained**: {self.trained}\n"
            f"- **command**: `{self.command}`\n- **file**: {self.path} "
            f"({self.path.stat().st_size / 2**20:.1f} MiB, sha256 {self.sha256[:16]}...)\n\n"
            f"| metric (`hetgan eval`, {self.n} samples) | value | a retraining lands within |\n| --- | ---: | ---: |\n"
            f"{rows}\n"
        )


def pretrained(name: str) -> Pretrained:
    """The packaged generator `name` and its card; a HetganError naming the valid names otherwise."""
    if name not in NAMES:
        raise HetganError(f"no pretrained generator named {name!r}; valid: {', '.join(NAMES)} (hetgan pretrained)")
    folder = resources.files("hetgan.pretrained")
    card = json.loads(folder.joinpath(f"{name}.json").read_text())
    return Pretrained(name=name, path=Path(str(folder.joinpath(f"{name}.safetensors"))), **card)


def list_pretrained() -> list[Pretrained]:
    """Every generator shipped in the package, with its card (`hetgan pretrained`).

    Returns:
        A `Pretrained` per name: `name`, `path` (its generator.safetensors), `summary`, `data`,
        `recipe`, `command`, `metrics`, `noise`, `trained`, and `card()`.

    Example:
        >>> for model in hetgan.list_pretrained():
        ...     print(model.name, model.metrics["fid"])
    """
    return [pretrained(name) for name in NAMES]


def pretrained_card(name: str) -> str:
    """The model card of the packaged generator `name`, as markdown (`hetgan pretrained NAME`):
    its data, recipe, the command that trained it, its metrics and their noise, date and machine.

    Raises:
        HetganError: no generator of that name, with the valid names.

    Example:
        >>> print(hetgan.pretrained_card("mnist"))
    """
    return pretrained(name).card()


def resolve_source(source: str | Path) -> Path:
    """`source` as a path, or, when no file or folder of that name exists and it names a packaged
    generator, that generator's artifact: what `load_generator` and every command's source take."""
    path = Path(source)
    if not path.exists() and str(source) in NAMES:
        return pretrained(str(source)).path
    return path
