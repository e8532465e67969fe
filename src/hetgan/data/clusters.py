"""Cluster labels for unlabelled data: the labels of a self-conditioned GAN.

Liu et al., "Diverse Image Generation via Self-Conditioned GANs" (CVPR 2020): partition the
training data into k clusters, train a conditional G and D on the cluster labels, and sample over
the clusters' frequencies. Each cluster is a narrower distribution than the whole, which a
conditional G learns more easily than one G learns all of them: it does not have to bend one
latent space around every mode, and D's projection term punishes a sample drawn in the wrong one.

Images are clustered by k-means in the first principal components of their pixels (downscaled);
points of a 2-D mixture by k-means in the plane, each fresh point labelled by its nearest centre.
The clustering is a function of (data, k, seed) alone, so a resumed run, and every rank of a
data-parallel one, derives the same labels without storing them. Where the feature space comes
from, and what re-clustering in D's features gave, is in benchmarks/RESULTS.md, "Training quality".
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from hetgan.data.sources import ImageData, Mixture, cluster_names
from hetgan.errors import DataError

PCA_DIMS = 64  # principal components of the pixels that k-means sees
FEATURE_SIDE = 16  # images are area-downscaled to at most this side first (a PCA over 16x16xC pixels)
PCA_FIT_N = 20_000  # images the principal axes are fitted on (all are projected)
MIXTURE_FIT_N = 20_000  # points of a mixture that k-means is fitted on
KMEANS_ITERS = 50
CHUNK = 4096  # images converted to features at a time (a streamed dataset is decoded chunk by chunk)


def kmeans(x: torch.Tensor, k: int, seed: int, iters: int = KMEANS_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means with k-means++ seeding (Arthur & Vassilvitskii 2007) on x [N, d] (float64 for
    assignments that do not hang on round-off): (centres [k, d], labels int64 [N]). A cluster left
    empty takes the point farthest from its centre, so every one of the k is used."""
    g = torch.Generator().manual_seed(seed)
    centres = x[torch.randint(len(x), (1,), generator=g)]
    nearest = torch.cdist(x, centres).flatten()  # each point's distance to its nearest centre so far
    for _ in range(k - 1):
        d2 = nearest.square()
        if d2.sum() > 0:
            pick = torch.multinomial(d2 / d2.sum(), 1, generator=g)
        else:  # every point sits on a centre already
            pick = torch.randint(len(x), (1,), generator=g)
        centres = torch.cat([centres, x[pick]])
        nearest = torch.minimum(nearest, torch.cdist(x, x[pick]).flatten())  # only the new centre is new
    for _ in range(iters):
        dist = torch.cdist(x, centres)
        labels = dist.argmin(1)
        counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        new = sums / counts.clamp(min=1)[:, None]
        for j in torch.nonzero(counts == 0).flatten().tolist():  # refill an empty cluster
            far = dist.gather(1, labels[:, None]).flatten().argmax()
            new[j], labels[far] = x[far], j
        if torch.equal(new, centres):
            break
        centres = new
    return centres, torch.cdist(x, centres).argmin(1)


def image_features(images, dims: int = PCA_DIMS, seed: int = 0) -> torch.Tensor:
    """uint8 [N, C, R, R] (an array or LazyImages) -> float64 [N, dims]: each image area-downscaled
    to at most FEATURE_SIDE, centred, projected on the first principal axes of (up to PCA_FIT_N of)
    the images. torch's global generator is seeded with `seed` (pca_lowrank's random sketch draws
    from it), as a trainer seeds it before building its networks."""
    small = torch.cat([_downscaled(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)])
    mean = small.mean(0)
    if len(small) > PCA_FIT_N:
        fit = small[torch.randperm(len(small), generator=torch.Generator().manual_seed(seed))[:PCA_FIT_N]]
    else:
        fit = small
    q = min(dims, *fit.shape)
    torch.manual_seed(seed)  # pca_lowrank's random sketch draws from the global generator
    _, _, axes = torch.pca_lowrank(fit - mean, q=q, center=False)  # axes [D, q]
    return (small - mean) @ axes


def _downscaled(images) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float64) / 255.0  # [n, C, R, R]
    side = x.shape[-1]
    if side > FEATURE_SIDE:
        x = F.adaptive_avg_pool2d(x, FEATURE_SIDE)
    return x.flatten(1)


def cluster_images(data: ImageData, k: int, seed: int) -> ImageData:
    """`data` labelled by its k clusters (its own labels, if any, are set aside), with cluster
    names "c0".."c{k-1}"."""
    if len(data.images) < k:
        raise DataError(
            f"{data.source}: data.clusters={k} needs at least {k} images, and there are {len(data.images)}; "
            f"set data.clusters to at most {len(data.images)}"
        )
    _, labels = kmeans(image_features(data.images, seed=seed), k, seed)
    return dataclasses.replace(data, labels=labels.numpy(), class_names=cluster_names(k))


def cluster_mixture(data: Mixture, k: int, seed: int) -> Mixture:
    """`data` with k centres fitted on MIXTURE_FIT_N of its points; its sampler labels every point
    it draws by the nearest centre."""
    g = np.random.default_rng(seed)
    points = data.modes[g.integers(0, len(data.modes), MIXTURE_FIT_N)] + g.normal(size=(MIXTURE_FIT_N, 2)) * data.sigma
    centres, labels = kmeans(torch.from_numpy(points).double(), k, seed)
    weights = torch.bincount(labels, minlength=k).double() / len(labels)
    return dataclasses.replace(data, centres=centres.numpy(), centre_weights=[round(w, 6) for w in weights.tolist()])


def self_conditioned(data: ImageData | Mixture, k: int, seed: int) -> ImageData | Mixture:
    """The data labelled by its k clusters: images by k-means in pixel-PCA space, a mixture's
    points by their nearest of k centres."""
    if isinstance(data, Mixture):
        return cluster_mixture(data, k, seed)
    return cluster_images(data, k, seed)
