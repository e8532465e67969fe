"""Which feature space a self-conditioned GAN (data.clusters) should cluster the bundled digits
in: the purity of k-means clusters (the share of images whose cluster's most common digit is
their own) in the pixels' principal components, as hetgan clusters, and in a DCGAN discriminator's
pooled features (the space Liu et al. re-cluster in), at initialisation and after training.

    python benchmarks/cluster_purity.py [--run RUN_DIR ...] [--k 10 20 50 100 200]

A RUN_DIR is a trained conditional or self-conditioned dcgan run on the digits; its newest
checkpoint's D is used. The labels are used only to score the clusters, never to make them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from hetgan.config import DataConfig, from_dict
from hetgan.data import load_data
from hetgan.data.clusters import image_features, kmeans
from hetgan.models import build_models
from hetgan.presets import get_preset
from hetgan.training.checkpoint import load_latest_checkpoint


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    return sum(np.bincount(labels[clusters == c]).max() for c in np.unique(clusters)) / len(labels)


@torch.no_grad()
def d_features(D: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    """D's pooled features, the input of its projection (or of its last layer): [N, C] float64."""
    seen = []
    head = D.projection if getattr(D, "projection", None) is not None else D.net[-1]
    hook = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].flatten(1)))
    x = torch.from_numpy(images).float().div(127.5).sub(1)
    y = torch.zeros(len(x), dtype=torch.int64)
    D.eval()
    try:
        if getattr(D, "n_classes", 0):
            D(x, y)
        else:
            D(x)
    finally:
        hook.remove()
    return seen[0].double()


def standardised(f: torch.Tensor) -> torch.Tensor:
    return (f - f.mean(0)) / (f.std(0) + 1e-8)


def trained_d(run: Path) -> torch.nn.Module:
    _, tensors, meta = load_latest_checkpoint(run / "checkpoints")
    cfg = from_dict(meta["config"], where=str(run))
    _, D = build_models(cfg)
    D.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("D.")})
    return D


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", nargs="*", type=Path, default=[], help="trained dcgan runs on the digits")
    parser.add_argument("--k", nargs="+", type=int, default=[10, 20, 50, 100, 200])
    args = parser.parse_args()
    data = load_data(DataConfig(spec="mnist5k"))
    torch.manual_seed(0)  # D's initial weights
    cfg = get_preset("cdcgan_mnist")
    cfg.model.n_classes = 10
    spaces = {"pixels, 64 principal components (hetgan)": image_features(data.images)}
    spaces["D at initialisation (cdcgan_mnist)"] = standardised(d_features(build_models(cfg)[1], data.images))
    for run in args.run:
        spaces[f"D of {run.name}, trained"] = standardised(d_features(trained_d(run), data.images))
    for name, features in spaces.items():
        scores = {f"k={k}": round(purity(data.labels, kmeans(features, k, 0)[1].numpy()), 3) for k in args.k}
        print(json.dumps({"space": name, **scores}), flush=True)


if __name__ == "__main__":
    main()
