"""Issue 26's targets, side by side in one run:

    python benchmarks/conditional_targets.py [--kimg 200] [--small-kimg 400] [--n 5000] [--seeds 0,1]
        [--classifier-epochs 15] [--synthetic-per-class 500] [--out DIR] [--json FILE]

1. Conditional default: `cdcgan_mnist` and the unconditional default `dcgan_mnist` trained with the
   same budget (--kimg, the default run's 200) on the bundled digits, one after the other: wall
   time, FID (digits) and, for the conditional one, the share of samples of each requested digit
   that the digit evalnet classifies as that digit.
2. Augmentation value: the bundled digits split into 1000 held-out test digits (100 a class) and
   4000 others, of which 500 (50 a class) are the classifier's real training set. A small
   classifier (the evalnet's CNN, fixed epochs) is trained on the 500 real digits alone and on the
   500 plus conditional synthetic digits (500 a class), and tested on the 1000 held out, for each
   --seeds. The conditional G is trained (a) on the 4000 non-test digits and (b) on the 500 alone,
   with ADA; neither sees a test digit.
3. ADA on a 500-image subset: `dcgan_mnist` on the 500 digits of (2) for --small-kimg (400: by
   then D has overfitted the 500 without ADA), with and without ADA (loss.ada_target=0.6, the
   default loss.ada_kimg 100), FID against the 500 and against all 5000 digits; the ADA run's p
   trace is its plots/ada.png (copied to --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from hetgan.artifact import load_torch_generator
from hetgan.config import DataConfig
from hetgan.data import ImageData, load_data
from hetgan.eval.evalnet import DIGITS_EVALNET, accuracy, fit_evalnet, held_out_split
from hetgan.eval.score import Evaluator, evaluate
from hetgan.presets import get_preset
from hetgan.report.plots import make_plots
from hetgan.sample_files import sample_uint8
from hetgan.training.loop import train

DIGITS = str(resources.files("hetgan.eval").joinpath(DIGITS_EVALNET))  # FID (digits) for npz subsets too
CLASSIFIER_EPOCHS = 15
SYNTHETIC_PER_CLASS = 500
CONDITIONAL_ACCURACY_BOUND = 0.95


def timed_run(preset: str, out: Path, kimg: float, overrides: list[str] = ()) -> tuple[Path, float]:
    cfg = get_preset(preset)
    start = time.perf_counter()
    run = train(cfg, out, overrides=[f"train.kimg={kimg}", *overrides], progress=False).finished().run_dir
    return run, time.perf_counter() - start


def conditional_default(out: Path, args) -> dict:
    rows = {}
    for preset in ("dcgan_mnist", "cdcgan_mnist"):
        run, wall = timed_run(preset, out / preset, args.kimg)
        G = load_torch_generator(run)
        metrics = evaluate(G, n=args.n, seed=0, metrics=("fid", "per_class") if G.n_classes else ("fid",))
        rows[preset] = {"wall_s": round(wall, 1), "fid": metrics["fid"]}
        if G.n_classes:
            rows[preset]["class_accuracy"] = metrics["class_accuracy"]
            rows[preset]["class_accuracy_per_class"] = metrics["class_accuracy_per_class"]
        print(preset, rows[preset], flush=True)
    cond, uncond = rows["cdcgan_mnist"], rows["dcgan_mnist"]
    worst = min(cond["class_accuracy_per_class"].values())
    rows["met"] = worst >= CONDITIONAL_ACCURACY_BOUND and cond["fid"] <= uncond["fid"]
    return rows


def splits(seed: int = 0) -> tuple[ImageData, np.ndarray, np.ndarray, np.ndarray]:
    """(the bundled digits, 4000 non-test indices, 500 of them (50 a class), 1000 test indices)."""
    data = load_data(DataConfig())
    rest, test = held_out_split(data.labels, 100, seed)
    small = rest[held_out_split(data.labels[rest], 50, seed + 1)[1]]
    return data, rest, small, test


def write_npz(data: ImageData, index: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    # [N, C, H, W] at 32 px -> [N, H, W]: the npz reader takes (N, H, W) uint8
    np.savez(path, images=data.images[index][:, 0], labels=data.labels[index])
    return path


def classifier_accuracy(images: np.ndarray, labels: np.ndarray, test: tuple, seed: int, epochs: int) -> float:
    train_set = ImageData(images, labels, [str(i) for i in range(10)], "train")
    net = fit_evalnet(train_set, epochs=epochs, held_out_per_class=1, seed=seed)
    return accuracy(net, *test)


def augmentation_value(out: Path, args) -> dict:
    data, rest, small, test = splits()
    x_test = torch.from_numpy(data.images[test]).float().div(127.5).sub(1)
    test_set = (x_test, torch.from_numpy(data.labels[test]))
    real_x, real_y = data.images[small], data.labels[small]
    generators = {
        "G on the 4000 non-test digits": ("cdcgan_mnist", write_npz(data, rest, out / "rest4000.npz"), []),
        "G on the 500 real digits (ADA)": (
            "cdcgan_mnist",
            write_npz(data, small, out / "real500.npz"),
            ["loss.ada_target=0.6", "loss.ada_kimg=20"],
        ),
    }
    result: dict = {"test_n": len(test), "real_n": len(small), "synthetic_n": 10 * args.synthetic_per_class, "rows": {}}
    for name, (preset, npz, extra) in generators.items():
        run, wall = timed_run(preset, out / npz.stem, args.kimg, [f"data.spec=npz:{npz}", *extra])
        G = load_torch_generator(run)
        y = np.repeat(np.arange(10), args.synthetic_per_class)
        synthetic = sample_uint8(G, len(y), seed=7, labels=torch.from_numpy(y)).transpose(0, 3, 1, 2)
        row = {"gan_wall_s": round(wall, 1), "real_only": [], "real_plus_synthetic": []}
        for seed in args.seeds:
            epochs = args.classifier_epochs
            row["real_only"].append(classifier_accuracy(real_x, real_y, test_set, seed, epochs))
            both = np.concatenate([real_x, synthetic]), np.concatenate([real_y, y])
            row["real_plus_synthetic"].append(classifier_accuracy(*both, test_set, seed, epochs))
        row["met"] = float(np.mean(row["real_plus_synthetic"])) > float(np.mean(row["real_only"]))
        result["rows"][name] = row
        print(name, row, flush=True)
    return result


def ada_small(out: Path, args) -> dict:
    data, _, small, _ = splits()
    npz = write_npz(data, small, out / "real500.npz")
    full = Evaluator(get_preset("dcgan_mnist"), seed=0, metrics=("fid",))
    rows = {}
    for name, extra in (("without ADA", []), ("with ADA", ["loss.ada_target=0.6"])):
        run, wall = timed_run("dcgan_mnist", out / f"small500-{'ada' if extra else 'plain'}", args.small_kimg,
                              [f"data.spec=npz:{npz}", *extra])  # fmt: skip
        G = load_torch_generator(run)
        rows[name] = {
            "wall_s": round(wall, 1),
            "fid_vs_500": evaluate(G, n=args.n, seed=0, metrics=("fid",), evalnet=DIGITS)["fid"],
            "fid_vs_5000": full(G, args.n)["fid"],
        }
        if extra:
            make_plots(run)
            shutil.copy(run / "plots" / "ada.png", out / "ada_p.png")
            last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            rows[name]["final_p"] = next(r["ada_p"] for r in reversed(last) if "ada_p" in r)
        print(name, rows[name], flush=True)
    rows["met"] = rows["with ADA"]["fid_vs_500"] <= rows["without ADA"]["fid_vs_500"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kimg", type=float, default=200.0)
    parser.add_argument("--small-kimg", type=float, default=400.0)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--classifier-epochs", type=int, default=CLASSIFIER_EPOCHS)
    parser.add_argument("--synthetic-per-class", type=int, default=SYNTHETIC_PER_CLASS)
    parser.add_argument("--out", default="/tmp/hetgan-conditional-targets")
    parser.add_argument("--json")
    parser.add_argument("--only", choices=["conditional", "augmentation", "ada"], action="append")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    parts = {"conditional": conditional_default, "augmentation": augmentation_value, "ada": ada_small}
    results = {name: part(out / name, args) for name, part in parts.items() if not args.only or name in args.only}
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
