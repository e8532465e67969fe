"""Sample-quality metrics in a feature space, and mode metrics for 2-D mixtures. float64 throughout.

- FID: Heusel et al. 2017, the Frechet distance between Gaussians fitted to two feature sets.
- KID: Binkowski et al. 2018, unbiased MMD^2 with the cubic polynomial kernel, over subsets.
- Precision / recall: Kynkaanniemi et al. 2019, k-NN manifolds of each feature set.
- Density / coverage: Naeem et al. 2020, k-NN balls around real features.
- Mode metrics: Lin et al. 2018 (PacGAN) protocol for 2-D Gaussian mixtures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch

BLOCK_ENTRIES = 1 << 23  # distances held at once by the k-NN metrics: 64 MiB of float64
PR_K, DC_K = 3, 5  # the neighbours of precision / recall (Kynkaanniemi et al.) and density / coverage (Naeem et al.)


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    feats = np.asarray(feats, dtype=np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)).

    tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S1^(1/2) S2 S1^(1/2), which has the spectrum of S1 S2 and, unlike a general matrix square
    root, never turns complex from rounding.
    """
    vals, vecs = np.linalg.eigh(sigma1)
    sqrt1 = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    middle = sqrt1 @ sigma2 @ sqrt1
    eig = np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eig).sum())


def fid(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


def kid(
    feats_a: np.ndarray, feats_b: np.ndarray, n_subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, mean and std over random subsets."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = _cubic_kernel(x, x, d), _cubic_kernel(y, y, d), _cubic_kernel(x, y, d)
        # Diagonal terms left out of the within-set sums: that is what makes the estimate unbiased.
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def _cubic_kernel(x: np.ndarray, y: np.ndarray, d: int) -> np.ndarray:
    """(x @ y.T / d + 1) ** 3, in place and cubed by two products: numpy's ** 3 calls pow() on each
    entry, which took half of KID's time (100 subsets of three 1000 x 1000 kernels)."""
    t = x @ y.T
    t /= d
    t += 1
    cube = t * t
    cube *= t
    return cube


def _distances(a: np.ndarray, b: np.ndarray) -> torch.Tensor:
    # np.array copies: the real features may be a shared, read-only array (score.cached_real_features)
    return torch.cdist(torch.from_numpy(np.array(a, np.float64)), torch.from_numpy(np.array(b, np.float64)))


def distance_blocks(a: np.ndarray, b: np.ndarray) -> Iterator[tuple[slice, torch.Tensor]]:
    """(rows, distances from a[rows] to all of b) over a, a block of rows at a time, so that at
    most BLOCK_ENTRIES distances are held at once: 50,000 samples against themselves would
    otherwise take 20 GB."""
    rows = max(1, BLOCK_ENTRIES // max(len(b), 1))
    for start in range(0, len(a), rows):
        block = slice(start, min(start + rows, len(a)))
        yield block, _distances(a[block], b)


def knn_radii(feats: np.ndarray, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest neighbour in the same set (itself excluded)."""
    return knn_radii_for(feats, (k,))[k]


def knn_radii_for(feats: np.ndarray, ks: Iterable[int]) -> dict[int, torch.Tensor]:
    """`knn_radii` for each k in `ks` from one pass over the set's distances, {k: radii}: the same
    numbers (each is a distance picked from the same rows), for the price of one k."""
    ks = sorted(set(ks))
    parts: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for _, d in distance_blocks(feats, feats):
        nearest = d.topk(ks[-1] + 1, dim=1, largest=False).values  # ascending, itself first
        for k in ks:
            parts[k].append(nearest[:, k])
    return {k: torch.cat(p) for k, p in parts.items()}


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = PR_K, real_radii: torch.Tensor | None = None
) -> tuple[float, float]:
    """Precision: share of fakes inside the real k-NN manifold; recall: reals inside the fake one.
    `real_radii`: knn_radii(real, k), where the caller has them already."""
    r_real = knn_radii(real, k) if real_radii is None else real_radii
    r_fake = knn_radii(fake, k)
    fake_inside = torch.zeros(len(fake), dtype=torch.bool)
    real_inside = torch.zeros(len(real), dtype=torch.bool)
    for rows, d in distance_blocks(real, fake):  # d: [rows of real, N_fake]
        fake_inside |= (d <= r_real[rows, None]).any(0)
        real_inside[rows] = (d <= r_fake[None, :]).any(1)
    return float(fake_inside.double().mean()), float(real_inside.double().mean())


def density_coverage(
    real: np.ndarray, fake: np.ndarray, k: int = DC_K, real_radii: torch.Tensor | None = None
) -> tuple[float, float]:
    """Density: fakes inside the real k-NN balls, counted with multiplicity, over k * fakes;
    coverage: share of reals whose ball holds a fake. `real_radii` as for `precision_recall`."""
    r_real = knn_radii(real, k) if real_radii is None else real_radii
    inside_count = 0
    covered = torch.zeros(len(real), dtype=torch.bool)
    for rows, d in distance_blocks(real, fake):  # d: [rows of real, N_fake]
        inside = d <= r_real[rows, None]
        inside_count += int(inside.sum())
        covered[rows] = inside.any(1)
    return inside_count / (k * len(fake)), float(covered.double().mean())


def class_histogram(probs: np.ndarray, n_classes: int) -> dict:
    """Predicted-class counts of generated samples, classes covered, mean confidence, and the KL
    divergence of the class histogram to the uniform one (PacGAN's and VEEGAN's mode KL: 0 when
    every class is drawn alike, log(n_classes) when all samples are one class)."""
    pred, conf = probs.argmax(1), probs.max(1)
    counts = np.bincount(pred, minlength=n_classes)
    p = counts[counts > 0] / counts.sum()
    return {
        "class_counts": counts.tolist(),
        "classes_covered": int((counts > 0).sum()),
        "mean_confidence": float(conf.mean()),
        "kl_to_uniform": float((p * np.log(p * n_classes)).sum()),
    }


COLLAPSE_TRY = (
    "what to try: resume from an earlier checkpoint with lower learning rates (optim.g_lr, optim.d_lr), "
    "add loss.r1_gamma, or train with loss.augment=translation on small data"
)


def quality_warnings(result: dict) -> list[str]:
    """What a user must be told about a generator's scores, in words: most samples of one class
    (mode collapse), classes or modes never drawn. Empty where nothing is wrong or the metrics
    that would show it were not computed."""
    warnings = []
    counts = np.asarray(result.get("class_counts", []))
    if counts.size and counts.sum() > 0:
        k, total = counts.size, int(counts.sum())
        top = int(counts.argmax())
        share = counts[top] / total
        if share > min(0.9, 3 / k):  # over 3x the uniform share (at most 90 %, for few classes)
            warnings.append(
                f"mode collapse: {share:.0%} of the {total} samples are classified as class {top} (a generator "
                f"that draws every class alike gives {100 / k:.3g} %); {COLLAPSE_TRY}"
            )
        missing = [i for i, c in enumerate(counts) if c == 0]
        if missing and total >= 20 * k:  # enough samples that a drawn class would show up
            shown = f"{missing[:20]}" if len(missing) <= 20 else f"{len(missing)} of {k}, the first {missing[:20]}"
            warnings.append(f"classes never drawn in {total} samples: {shown}; {COLLAPSE_TRY}")
    if "modes_captured" in result and result["modes_captured"] < result["modes_total"]:
        warnings.append(
            f"modes missed: {result['modes_total'] - result['modes_captured']} of {result['modes_total']} "
            f"have no high-quality sample; {COLLAPSE_TRY}"
        )
    return warnings


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean Euclidean distance between distinct rows of x [N, D]."""
    total = sum(float(d.sum()) for _, d in distance_blocks(x, x))
    return total / (len(x) * (len(x) - 1))


def diversity(feats: np.ndarray, real_feats: np.ndarray, n: int = 500) -> float:
    """Mean pairwise feature distance of the first n (fixed-z) samples over the same for real data.

    Near 1: as varied as the data; near 0: the generator ignores z (collapse).
    """
    return mean_pairwise_distance(feats[:n]) / mean_pairwise_distance(real_feats[:n])


def mode_metrics(points: np.ndarray, modes: np.ndarray, sigma: float) -> dict:
    """PacGAN's 2-D protocol: a sample is high quality within 3 sigma of its nearest mode; a mode
    is captured when at least one high-quality sample is nearest to it; reverse KL is
    KL(generated mode histogram || uniform) over high-quality samples. With no high-quality sample
    there is no histogram: reverse KL is then inf, below any generator that has one (it read 0,
    the score of a perfect one)."""
    d = _distances(points, modes)
    nearest_dist, nearest = d.min(1)
    good = nearest_dist <= 3 * sigma
    counts = np.bincount(nearest[good].numpy(), minlength=len(modes))
    captured = int((counts > 0).sum())
    q = 1.0 / len(modes)
    if counts.sum() == 0:
        reverse_kl = float("inf")
    else:
        p = counts / counts.sum()
        reverse_kl = float(sum(pi * np.log(pi / q) for pi in p if pi > 0))
    return {
        "modes_captured": captured,
        "modes_total": len(modes),
        "high_quality": float(good.double().mean()),
        "reverse_kl": reverse_kl,
        "mode_counts": counts.tolist(),
    }
