"""The README's set-up commands are the ones CI runs, what it shows `train` printing is what it
prints, and the install files pin torch."""

import math
import re
from pathlib import Path

import pytest

from hetgan.presets import get_preset
from hetgan.training.loop import TrainResult

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    block = re.search(r"## Set-up: two commands.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    install_and_train, test = readme_commands()
    assert "pip install ." in install_and_train and "hetgan train" in install_and_train
    assert "pytest" in test and "ruff check" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines(), "CI must run exactly the README's test command"


def test_readme_shows_what_train_prints_at_the_end():
    """The default run, in the first numbered run directory: as many steps of its batch as reach
    its kimg (the last step overshoots a little)."""
    cfg = get_preset("dcgan_mnist")
    steps = math.ceil(cfg.train.kimg * 1000 / cfg.train.batch_size)
    shown_speed = 1216.0  # the README's example (a real default run's figure on 2 cores)
    run = TrainResult(
        Path("runs/00000-dcgan_mnist"), steps, steps * cfg.train.batch_size / 1000, None, 0, img_per_s=shown_speed
    )
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"`hetgan train` prints where everything went:\n\n```\n(.*?)\n```", readme, re.S).group(1)
    assert shown == run.summary()


def test_the_docs_say_how_far_past_its_kimg_a_resnet_step_goes():
    cfg = get_preset("resnet_cifar10")
    per_step = cfg.train.batch_size * cfg.loss.n_critic
    page = " ".join((ROOT / "docs" / "training.md").read_text().split())  # lines joined
    assert f"(`loss.n_critic` of them: {per_step} for `resnet_cifar10`)" in page


def test_the_readme_is_a_front_door():
    """The manual lives on the docs site; the README stays short."""
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_torch_is_pinned():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject
    assert "torchvision" not in pyproject


@pytest.mark.slow
def test_a_test_that_needs_a_missing_program_fails_under_ci(tmp_path):
    """The browser and load tests skip where chromium or wrk is missing on a developer's machine,
    but fail under CI, so that a green CI run means the page was really tested."""
    import os
    import subprocess
    import sys

    test = tmp_path / "probe" / "test_needs.py"
    test.parent.mkdir()
    (test.parent / "__init__.py").write_text("")
    (test.parent / "conftest.py").write_text("from tests.conftest import pytest_runtest_setup  # noqa: F401\n")
    test.write_text("import pytest\n\n\n@pytest.mark.program('no-such-program-here')\ndef test_it():\n    pass\n")

    def outcome(ci: str) -> tuple[int, str]:
        env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", str(test)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return done.returncode, done.stdout + done.stderr

    code, out = outcome("")
    assert code == 0 and "1 skipped" in out
    code, out = outcome("true")  # an error in the test's set-up: a red run
    assert code == 1 and "no-such-program-here is not installed; CI must run this test" in out
