"""Shared fixtures: tiny configs and small data files written by the tests themselves."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

import hetgan
from hetgan.artifact import save_generator
from hetgan.config import TrainConfig
from hetgan.deploy.load import load_generator
from hetgan.models import build_models
from hetgan.training.loop import train

ROOT = Path(__file__).resolve().parents[1]  # the repository

# Under pytest-xdist (`-n`, as pyproject.toml asks) the workers share the cores: each worker's torch,
# and every process its tests start, gets its share of them rather than all of them, so that two
# workers on 2 cores do not run four busy threads.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)

# Debian's Chromium, which .ci/run installs, and the flags it runs headless with here: no sandbox
# as root, and none of its background connections (this machine has no network to give them).
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_configure(config):
    """One cache folder for the whole run (hetgan/eval/feature_cache.py: the real images'
    features), shared by the workers and the processes the tests start, which inherit the
    environment: the suite starts from an empty cache, as a fresh machine does, and neither reads
    nor fills the user's ~/.cache/hetgan. Workers (config.workerinput) take the controller's."""
    if not hasattr(config, "workerinput"):
        config.hetgan_cache = tempfile.mkdtemp(prefix="hetgan-test-cache-")
        os.environ["HETGAN_CACHE_DIR"] = config.hetgan_cache


def pytest_unconfigure(config):
    if hasattr(config, "hetgan_cache"):
        shutil.rmtree(config.hetgan_cache, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The slow tests (3 s to 90 s each) first, the others after, each group in file order: pytest-xdist
    hands tests out in this order and the workers steal from each other's queues, so the suite ends
    on short tests, not on one worker running a minute-long test while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_runtest_setup(item):
    """`@pytest.mark.program("chromium")`: a test that needs a program Debian installs. Where it is
    missing the test is skipped on a developer's machine, but fails under CI (CI=true; .ci/run
    installs them), so that a green CI means the page and the load were really tested."""
    for marker in item.iter_markers("program"):
        name = marker.args[0]
        if shutil.which(name) is None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"{name} is not installed; CI must run this test (.ci/run installs it with apt-get)")
            pytest.skip(f"Debian's {name} is not installed (.ci/run installs it)")


@pytest.fixture(autouse=True)
def _workers_share_of_the_cores():
    """Put back torch's thread count after each test: one that trains with accel.threads or
    serves an app in this process must not leave the worker on every core (see the top of this
    file), slowing the rest of the suite with threads that fight the other worker's."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def GPU(test):
    """A test that needs a CUDA GPU: skipped without one; `pytest -m gpu` runs them all, as
    benchmarks/gpu_suite.sh does."""
    return pytest.mark.gpu(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")(test))


@pytest.fixture
def digits_npz(tmp_path):
    """128 random 28x28 'digits' with labels, as an npz the npz: reader accepts."""
    rng = np.random.default_rng(0)
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        images=rng.integers(0, 256, (128, 28, 28), dtype=np.uint8),
        labels=rng.integers(0, 10, 128).astype(np.uint8),
    )
    return path


def benchmark_module(name: str):
    """benchmarks/NAME.py imported as a module (the folder is not a package), for a test that calls
    a benchmark's functions rather than running the script."""
    path = ROOT / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_benchmark(name: str, *args: str, timeout: float = 300, process: bool = False) -> str:
    """Run benchmarks/NAME.py with ARGS as `python benchmarks/NAME.py ARGS` from the repository root
    would, require a clean exit and return what it printed.

    By default the script runs in this process (its `__main__` through runpy, its folder first on
    sys.path, as Python puts it), which saves the 4 s each process spends importing torch and
    hetgan; `process=True` gives it a process of its own, for a script whose figures are its
    process's (compile counters) or that starts processes it must outlive. (The scripts that compile
    OpenVINO models run here too: the SIGSEGV they once left the worker at its next SIGINT was
    hetgan's, fixed by hetgan.deploy.openvino_core.) Either way a run past `timeout` seconds fails
    the test."""
    script = ROOT / "benchmarks" / f"{name}.py"
    if process:
        done = subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
        )
        assert done.returncode == 0, done.stderr
        return done.stdout
    printed, code = io.StringIO(), 0
    argv, path = sys.argv, sys.path[:]
    sys.argv, sys.path[:0] = [str(script), *args], [str(script.parent)]
    try:
        with contextlib.chdir(ROOT), contextlib.redirect_stdout(printed), _deadline(timeout, f"benchmarks/{name}.py"):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as stop:  # argparse errors, a script's own exit with a message
        code = stop.code
    finally:
        sys.argv, sys.path[:] = argv, path
    assert code in (0, None), f"benchmarks/{name}.py exited with {code!r}; it printed:\n{printed.getvalue()}"
    return printed.getvalue()


@contextlib.contextmanager
def _deadline(seconds: float, what: str):
    """Raise TimeoutError in this (main) thread once `seconds` have passed, as subprocess.run's
    timeout would for a process."""

    def expired(signum, frame):
        raise TimeoutError(f"{what} ran past its {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def strict_loads(text: str):
    """json.loads that fails on Python's non-standard NaN and Infinity, as jq or JavaScript would."""
    return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON: {token}"))


def tiny_config(data_spec: str, arch: str = "dcgan", **loop) -> TrainConfig:
    """A config small enough that a few hundred steps take seconds on one CPU core."""
    cfg = TrainConfig(preset="tiny", seed=3)
    cfg.data.spec = data_spec
    cfg.model.arch, cfg.model.width, cfg.model.z_dim = arch, 4 if arch != "mlp" else 16, 8
    cfg.train.batch_size = 8
    cfg.train.kimg = 0.16
    cfg.train.snapshot_kimg = 0.04
    cfg.train.grid_kimg = 0.08
    cfg.train.grid_size = 4
    cfg.train.log_interval = 2
    cfg.accel.device = "cpu"
    for key, value in loop.items():
        setattr(cfg.train, key, value)
    return cfg.validate()


@pytest.fixture
def tiny(digits_npz):
    return tiny_config(f"npz:{digits_npz}")


def assert_train_alike(a, b, steps: int) -> None:
    """Step two trainers in lockstep and require bit-equal G_ema weights: two ways of running
    the same training (placement, loader) that must not change the numbers."""
    for _ in range(steps):
        a.step()
        b.step()
    for x, y in zip(a.G_ema.parameters(), b.G_ema.parameters(), strict=True):
        assert torch.equal(x, y)


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory):
    """A tiny dcgan run, width 8 (widths [32, 16, 8]), on 128 random digits, trained once for the
    whole suite; tests take a copy (`teacher`)."""

    def build(folder: Path) -> Path:
        folder.mkdir()
        rng = np.random.default_rng(0)
        images, labels = rng.integers(0, 256, (128, 28, 28), dtype=np.uint8), rng.integers(0, 10, 128)
        np.savez(folder / "digits.npz", images=images, labels=labels.astype(np.uint8))
        cfg = tiny_config(f"npz:{folder / 'digits.npz'}")
        cfg.model.width = 8
        return train(cfg, out=folder / "teacher", progress=False).run_dir

    return once_per_suite(tmp_path_factory, "teacher", build)


@pytest.fixture
def teacher(trained_teacher, tmp_path):
    """Each test's own copy of the tiny teacher run, which it may compress, resume or change."""
    return Path(shutil.copytree(trained_teacher, tmp_path / "teacher"))


def once_per_suite(tmp_path_factory, name: str, build) -> Path:
    """BUILD(folder) -> path, run once for the whole suite, also when pytest-xdist spreads it over
    several worker processes: the first worker to ask builds it under a lock in the folder the
    workers share; the others wait for it and get the same path."""
    from filelock import FileLock  # torch's own dependency

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # each worker's base folder lies in the run's
    done = shared / f"{name}.path"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            done.write_text(str(build(shared / name)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def digits_generator(tmp_path_factory):
    """A small DCGAN trained briefly on the bundled digits (~10 s, once for the whole suite):
    blurry strokes, but trained weights and BatchNorm statistics, whose int8 ranges calibration
    must find. Tests read it and never change it. One grid, at the end: tiny_config's grid every
    2.5 steps would recalibrate G 40 times, half the fixture's time, for the same weights."""

    def build(folder: Path) -> Path:
        cfg = tiny_config("mnist5k")
        cfg.model.width, cfg.model.z_dim = 16, 32
        cfg.train.batch_size, cfg.train.kimg, cfg.train.snapshot_kimg, cfg.train.grid_kimg = 32, 3.2, 3.2, 3.2
        cfg.loss.name, cfg.optim.g_lr, cfg.optim.d_lr = "hinge", 1e-3, 1e-3
        return hetgan.train(cfg.validate(), out=folder / "run", progress=False).run_dir

    return once_per_suite(tmp_path_factory, "digits_generator", build)


@pytest.fixture(scope="module")
def digits_npz_module(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, images=rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), labels=rng.integers(0, 10, 64))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory, digits_npz_module):
    """A small DCGAN artifact (random weights, recalibrated BatchNorm) and its eager generator."""
    cfg = tiny_config(f"npz:{digits_npz_module}")
    G, _ = build_models(cfg)
    path = save_generator(G, cfg, tmp_path_factory.mktemp("serve") / "g.safetensors", run_id="00001-serve")
    return path, load_generator(path)
