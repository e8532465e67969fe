"""Make the pictures of the docs: a sample grid per preset trained on bundled data, the shipped
Stacked MNIST generator's grid, the compression search's Pareto plot, the serving page, and the
scaling model's plot.

    python3 scripts/make_figures.py [--out docs/images] [--runs runs/figures] [--only NAME ...]
                                    [--mixture-kimg K] [--compress-kimg K]

Each picture is written to OUT/NAME.png; the runs it trains are kept in RUNS and reused when the
script runs again (delete them to train afresh). The presets train at their own length, which
takes minutes for the digits and tens of minutes for the 2-D mixtures on a 2-core CPU;
`--mixture-kimg` shortens the mixtures (the plot's title says how far they trained). Pictures are
kept small (matplotlib at 100 dpi, PNG): each should stay under 200 KB, which the docs' test checks.
`resnet_cifar10` has no picture: CIFAR-10 is not bundled, and it trains at tens of images a second
on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = (
    "dcgan_mnist",
    "dcgan_mnist_selfcond",
    "dcgan_textbook",
    "cdcgan_mnist",
    "mlp_mnist",
    "mlp_ring8",
    "mlp_grid25",
)
FIGURES = (*PRESETS, "stacked_mnist", "pareto", "serving", "scaling")


def trained(preset: str, runs: Path, kimg: float | None = None) -> Path:
    """The run of `preset` under RUNS, trained now unless a finished one is there."""
    import hetgan

    run = runs / (preset if kimg is None else f"{preset}-{kimg:g}kimg")
    if (run / "generator.safetensors").exists():
        return run
    shutil.rmtree(run, ignore_errors=True)
    overrides = [] if kimg is None else [f"train.kimg={kimg}"]
    print(f"training {preset}{'' if kimg is None else f' for {kimg:g} kimg'} into {run}", flush=True)
    return hetgan.train(hetgan.get_preset(preset), out=run, overrides=overrides, progress=False).finished().run_dir


def samples(preset: str, out: Path, runs: Path, kimg: float | None = None) -> Path:
    """8x8 samples of seed 0 (a row per digit for a conditional preset), or for 2-D data a scatter
    plot of 2,500 samples over the mixture's modes."""
    import hetgan

    run = trained(preset, runs, kimg)
    G = hetgan.load_generator(run)
    path = out / f"{preset}.png"
    if G.config.model.conditional and not G.config.data.clusters:  # a self-conditioned G draws as any
        hetgan.sample(G, path, per_class=8, overwrite=True)
    elif len(G.shape) == 1:
        hetgan.sample(G, path, n=2500, overwrite=True)
    else:
        hetgan.sample(G, path, n=64, overwrite=True)
    return path


def stacked_mnist(out: Path) -> Path:
    """8x8 samples of seed 0 of the shipped `stacked-mnist` generator (`dcgan_stacked_mnist`,
    self-conditioned, 500 kimg: half an hour on a CPU, so the card's generator, not a new run)."""
    import hetgan

    path = out / "stacked_mnist.png"
    hetgan.sample(hetgan.load_generator("stacked-mnist"), path, n=64, overwrite=True)
    return path


def pareto(out: Path, runs: Path, kimg: float) -> Path:
    """`hetgan compress --target-ms` on the default run: the search's own Pareto plot."""
    import hetgan
    from hetgan.errors import HetganError

    teacher = trained("dcgan_mnist", runs)
    search = runs / f"search-{kimg:g}kimg"
    if not (search / "pareto.png").exists():
        shutil.rmtree(search, ignore_errors=True)
        print(f"searching students of {teacher} ({kimg:g} kimg each) into {search}", flush=True)
        try:
            hetgan.compress(teacher, search, target_ms=0.2, kimg=kimg, n=2000, progress=False, search_anyway=True)
        except HetganError as e:  # no student within the target: the plot still says so
            print(f"the search chose none: {e}", flush=True)
    path = out / "pareto.png"
    shutil.copyfile(search / "pareto.png", path)
    return path


def serving(out: Path, runs: Path) -> Path:
    """The page `hetgan serve` shows, in headless Chromium, after a grid and an interpolation."""
    from playwright.sync_api import sync_playwright

    run = trained("dcgan_mnist", runs)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "hetgan", "serve", "--run", str(run), "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "serving.png"
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, server)
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 900, "height": 700})
            page.goto(url + "/")
            page.fill("#n", "36")
            page.click("#generate")
            page.wait_for_function("document.getElementById('grid').naturalWidth > 0")
            page.fill("#frames", "8")
            page.click("#interpolate")
            page.wait_for_function("document.getElementById('walk').naturalWidth > 0")
            page.screenshot(path=str(path), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=60)
    return path


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"hetgan serve exited with status {server.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise SystemExit(f"hetgan serve was not ready within {timeout:.0f} s")


def scaling(out: Path) -> Path:
    """benchmarks/scaling_model.py: two ranks under torchrun here, the model's predictions beside."""
    path = out / "scaling.png"
    cmd = [sys.executable, "benchmarks/scaling_model.py", "--steps", "20", "--plot", str(path)]
    subprocess.run(cmd, cwd=ROOT, check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "figures")
    parser.add_argument("--only", nargs="+", choices=FIGURES, default=list(FIGURES))
    parser.add_argument("--mixture-kimg", type=float, help="train the 2-D mixtures this far (default: the presets')")
    parser.add_argument("--compress-kimg", type=float, default=20.0, help="distillation per searched student")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        if name == "pareto":
            path = pareto(args.out, args.runs, args.compress_kimg)
        elif name == "serving":
            path = serving(args.out, args.runs)
        elif name == "scaling":
            path = scaling(args.out)
        elif name == "stacked_mnist":
            path = stacked_mnist(args.out)
        else:
            kimg = args.mixture_kimg if name in ("mlp_ring8", "mlp_grid25") else None
            path = samples(name, args.out, args.runs, kimg)
        print(f"{path} ({path.stat().st_size / 1024:.0f} KB)", flush=True)


if __name__ == "__main__":
    main()
