"""`evaluate()`: score a generator against its real data; used by `hetgan eval` and training."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import torch

from hetgan.config import MIN_EVAL_N, TrainConfig
from hetgan.data import Mixture, load_data
from hetgan.data.sources import Data, parse_spec
from hetgan.deploy.load import generator_from
from hetgan.errors import HetganError
from hetgan.eval import metrics as M
from hetgan.eval.evalnet import EvalNet, StackedDigits, chance_warning, load_evalnet
from hetgan.eval.feature_cache import cached_features
from hetgan.eval.inception import load_inception
from hetgan.generator import SeededGenerator
from hetgan.placement import resolve_device

log = logging.getLogger("hetgan")
IMAGE_METRICS = ("fid", "kid", "pr", "dc", "classes", "diversity")
# Conditional generators only: "per_class" (the share of samples the feature network classifies as
# the class asked for, FID per class) is on by default; "cas" (a classifier trained on samples,
# tested on real images) trains a network, so it is asked for by name.
CONDITIONAL_METRICS = ("per_class", "cas")
CAS_EPOCHS = 8
CAS_TEST_PER_CLASS = 100
POINT_METRICS = ("modes",)
DIGIT_SPECS = ("mnist5k", "mnist")
STACKED_N = 26_000  # samples of a Stacked MNIST generator scored by default (the PacGAN protocol)
STACKED_METRICS = ("fid", "classes")  # by default: modes covered and KL to uniform, and FID
MAX_REAL = 10_000  # real images embedded for the reference statistics


def real_features(net: EvalNet, images_uint8: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Features of uint8 images [N, C, R, R], converted to [-1, 1] floats a batch at a time."""
    batches = (images_uint8[i : i + batch_size] for i in range(0, len(images_uint8), batch_size))
    return np.concatenate([net.embed(torch.from_numpy(b).float().div(127.5).sub(1))[0] for b in batches])


def cached_real_features(net, images_uint8: np.ndarray) -> np.ndarray:
    """`real_features`, computed once for the same network weights and the same images, in this
    process and across processes (hetgan/eval/feature_cache.py): every Evaluator of the same data
    (training's evaluations, a search scoring each candidate, `compress`, `hetgan eval` of several
    runs) would otherwise embed all the real images again. Read-only."""
    return cached_features(net, images_uint8, lambda: real_features(net, images_uint8))


def is_stacked(config: TrainConfig) -> bool:
    """Whether a config's data is Stacked MNIST, scored by its own protocol."""
    return parse_spec(config.data.spec)[0] == "stacked_mnist"


def feature_net_for(config: TrainConfig, evalnet: str | Path | None, inception: str | Path | None = None):
    """(network with `.embed` and `.cfg`, a description of its feature space). Without `evalnet`,
    the one the run was trained with (`train.evalnet`), if any."""
    if inception is not None:
        if evalnet is not None:
            raise HetganError("pass either an evalnet or Inception weights, not both")
        return load_inception(inception), f"InceptionV3 pool3, 2048-d (FID Inception weights {inception})"
    evalnet = evalnet or config.train.evalnet or None
    if evalnet is not None:
        net = load_evalnet(evalnet)
        name = f"evalnet {evalnet}"
    elif parse_spec(config.data.spec)[0] in DIGIT_SPECS and config.data.channels == 1:
        net = load_evalnet()
        name = "digits (bundled digit classifier)"
    elif is_stacked(config):
        net = StackedDigits(load_evalnet())
        name = "stacked digits (the bundled digit classifier on each channel; classes are the 1000 modes)"
    else:
        raise HetganError(
            f"no feature network for data {config.data.spec!r}: train one with "
            f"`hetgan evalnet train --data {config.data.spec} --resolution {config.data.resolution} "
            f"--channels {config.data.channels} --out evalnet.safetensors` "
            "and pass it: `hetgan eval --evalnet evalnet.safetensors` (from Python: "
            "`hetgan.evaluate(G, evalnet='evalnet.safetensors')`), or `--set train.evalnet=evalnet.safetensors` "
            "for eval during training"
        )
    if net.cfg.channels != config.data.channels:
        raise HetganError(f"the feature network takes {net.cfg.channels} channels, the data has {config.data.channels}")
    space = f"{name}; penultimate layer, {net.cfg.feature_dim}-d; held-out accuracy {net.cfg.held_out_accuracy:.4f}"
    if warning := chance_warning(net.cfg):
        log.warning("%s", warning)
        space += " (no better than guessing: metrics in it mean little)"
    return net, space


class Evaluator:
    """Reference statistics of a config's real data, computed once, and scoring against them."""

    def __init__(
        self,
        config: TrainConfig,
        evalnet=None,
        seed: int = 0,
        metrics: tuple[str, ...] | None = None,
        inception: str | Path | None = None,
        device: str | torch.device = "cpu",
        data: Data | None = None,
        max_real: int = MAX_REAL,
    ):
        self.data = load_data(config.data) if data is None else data  # a trainer passes its own
        self.seed, self.max_real = seed, max_real
        if isinstance(self.data, Mixture):
            self.metrics = POINT_METRICS
            return
        # Inception's 1008 ImageNet classes say nothing about the data's classes.
        valid = tuple(m for m in IMAGE_METRICS if not (inception and m == "classes"))
        # A self-conditioned G's classes are clusters, not the data's classes: no per-class scores.
        conditional = config.model.conditional and not config.data.clusters
        self.metrics = metrics or (valid + ("per_class",) if conditional and not inception else valid)
        if is_stacked(config) and not metrics:
            self.metrics = STACKED_METRICS  # the protocol's modes and KL (k-NN metrics over 26,000 take minutes)
        valid += CONDITIONAL_METRICS if conditional and not inception else ()  # they need the data's classes
        unknown = set(self.metrics) - set(valid)
        if unknown:
            raise HetganError(
                f"unknown metric(s) {sorted(unknown)} for images with this feature network; valid: {', '.join(valid)}"
            )
        self.net, self.space = feature_net_for(config, evalnet, inception)
        where = resolve_device(str(device))
        # On a CPU hetgan's own feature networks (EvalNet, StackedDigits) run channels-last,
        # oneDNN's own layout and faster there; Inception's weights keep theirs (not measured).
        layout = torch.channels_last if where.type == "cpu" and inception is None else torch.preserve_format
        self.net.to(where, memory_format=layout)

    @functools.cached_property
    def real(self) -> np.ndarray:
        """The real images' features, computed at the first scoring: a feature network that cannot
        be had is an error when the evaluator is made, but a resumed run that turns out finished
        (or a `train` that stops before its first evaluation) spends nothing on them."""
        return cached_real_features(self.net, self.data.images[self.real_order])

    @functools.cached_property
    def real_radii(self) -> dict[int, torch.Tensor]:
        """Each real feature's distance to its k-th nearest real neighbour, for the k of the k-NN
        metrics asked for (M.PR_K, M.DC_K), from one pass over the real set's distances (up to
        max_real squared) and kept for every later scoring: the real features never change, and
        training scores with one evaluator many times."""
        ks = [k for metric, k in (("pr", M.PR_K), ("dc", M.DC_K)) if metric in self.metrics]
        return M.knn_radii_for(self.real, ks)

    @functools.cached_property
    def real_order(self) -> np.ndarray:
        """The real images scored against, up to `max_real` (MAX_REAL), in a fixed random order."""
        return np.random.default_rng(self.seed).permutation(len(self.data.images))[: self.max_real]

    def __call__(self, G: SeededGenerator, n: int) -> dict:
        if n < MIN_EVAL_N:
            raise HetganError(
                f"n={n}: too few samples to score; at least {MIN_EVAL_N}, and FID and KID are biased "
                "below a few thousand (the default is 5000 images, 2500 points)"
            )
        # Samples and features are computed in full fp32 (SeededGenerator.sample_batches and the feature
        # networks switch TF32 off): the generator's own numbers, whatever TF32 setting it trained under.
        if isinstance(self.data, Mixture):
            points = G.sample(n, seed=self.seed).numpy()
            result = {
                "feature_space": "raw 2-D coordinates (PacGAN protocol)",
                "n_generated": n,
                "seed": self.seed,
                **M.mode_metrics(points, self.data.modes, self.data.sigma),
            }
            return result | {"warnings": M.quality_warnings(result)}
        # A batch of samples at a time into features: the n images are never held at once. A
        # conditional G draws the classes in turn (SeededGenerator.labels).
        parts = [self.net.embed(batch) for _, batch in G.sample_batches(n, seed=self.seed)]
        fake, probs = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        wanted = self.metrics
        # The real images are embedded only for the metrics that compare with them.
        real = self.real if set(wanted) & {"fid", "kid", "pr", "dc", "diversity"} else None
        result: dict = {"feature_space": self.space, "n_generated": n, "n_real": len(self.real_order)}
        result["seed"] = self.seed
        if "fid" in wanted:
            result["fid"] = M.fid(fake, real)
        if "kid" in wanted:
            result["kid"], result["kid_std"] = M.kid(fake, real, subset_size=min(1000, n, len(real)))
        if "pr" in wanted:
            result["precision"], result["recall"] = M.precision_recall(real, fake, real_radii=self.real_radii[M.PR_K])
        if "dc" in wanted:
            result["density"], result["coverage"] = M.density_coverage(real, fake, real_radii=self.real_radii[M.DC_K])
        if "classes" in wanted:
            result.update(M.class_histogram(probs, self.net.cfg.n_classes))
        if "diversity" in wanted:
            result["diversity"] = M.diversity(fake, real)
        if "per_class" in wanted:
            result.update(self.per_class(G, fake, probs, n))
        if "cas" in wanted:
            result.update(self.cas(G, n))
        return result | {"warnings": M.quality_warnings(result)}

    def per_class(self, G: SeededGenerator, fake: np.ndarray, probs: np.ndarray, n: int) -> dict:
        """How well a conditional G makes the class it is asked for: the share of its samples the
        feature network classifies as that class (where the network has the data's classes), and
        FID per class, each class's samples against its real images."""
        y = G.labels(n).numpy()
        result: dict = {}
        if self.net.cfg.n_classes == G.n_classes:
            result["class_accuracy"] = float((probs.argmax(1) == y).mean())
            result["class_accuracy_per_class"] = {
                name: float((probs[y == k].argmax(1) == k).mean()) for k, name in enumerate(G.class_names)
            }
        else:
            log.warning(
                "the feature network has %d classes and the generator %d: no class accuracy",
                self.net.cfg.n_classes,
                G.n_classes,
            )
        result["fid_per_class"] = fids = self.fid_per_class(G, fake, y)
        if fids:
            result["fid_class_mean"] = float(np.mean(list(fids.values())))
        return result

    def fid_per_class(self, G: SeededGenerator, fake: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """FID of each class's samples against its real images, for the classes with enough of
        both: a covariance in D feature dimensions has full rank only from D + 1 samples, and from
        fewer the FID says more about the count than about the generator. The classes left out are
        named in a warning, with the --n that would include them."""
        need = max(MIN_EVAL_N, self.real.shape[1] + 1)
        real_y = self.data.labels[self.real_order]
        counts = {name: (int((y == k).sum()), int((real_y == k).sum())) for k, name in enumerate(G.class_names)}
        short = {name: got for name, got in counts.items() if min(got) < need}
        if short:
            name, (fake_n, real_n) = next(iter(short.items()))
            log.warning(
                "no per-class FID for %d of %d classes: it needs %d samples of each class in this %d-d feature "
                "space (a full-rank covariance), got %d generated and %d real of class %r; pass --n %d or more",
                len(short), len(counts), need, self.real.shape[1], fake_n, real_n, name, need * len(counts),
            )  # fmt: skip
        return {
            name: M.fid(fake[y == k], self.real[real_y == k])
            for k, name in enumerate(G.class_names)
            if name not in short
        }

    def cas(self, G: SeededGenerator, n: int) -> dict:
        """Classification accuracy score (Ravuri & Vinyals 2019): a classifier of the feature
        network's architecture trained on n labelled samples of G alone, tested on real images (a
        fixed stratified split of the data; G trained on them too, unless it was trained without)."""
        from hetgan.data import ImageData
        from hetgan.eval.evalnet import accuracy, fit_evalnet, held_out_split
        from hetgan.sample_files import sample_uint8

        y = G.labels(n).numpy()
        synthetic = ImageData(sample_uint8(G, n, self.seed + 1).transpose(0, 3, 1, 2).copy(), y, G.class_names, "G")
        net = fit_evalnet(synthetic, epochs=CAS_EPOCHS, held_out_per_class=1, seed=self.seed)
        _, test = held_out_split(self.data.labels, CAS_TEST_PER_CLASS, seed=self.seed)
        x = torch.from_numpy(np.asarray(self.data.images[test])).float().div(127.5).sub(1)
        return {"cas": accuracy(net, x, torch.from_numpy(self.data.labels[test])), "cas_test_n": len(test)}


def evaluate(
    source: str | Path | SeededGenerator,
    n: int | None = None,
    seed: int = 0,
    metrics: tuple[str, ...] | None = None,
    evalnet=None,
    inception: str | Path | None = None,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    threads: int | None = None,
) -> dict:
    """Metrics of n samples (drawn with `seed`) against the generator's own training data (`hetgan eval`).

    Args:
        source: a run directory, a generator.safetensors, an exported .onnx/.xml, or a generator
            from `hetgan.load_generator`.
        n: samples to score (default 5000 images, 2500 points for 2-D data, 26,000 Stacked MNIST images).
        metrics: a subset of fid, kid, pr, dc, classes, diversity (images); default all that apply.
        evalnet: the feature space: a file from `hetgan evalnet train` (default: the run's
            train.evalnet, or the bundled digit classifier); `inception`: standard FID in
            InceptionV3 features, weights from this local file (never downloaded).
        device: where G (torch) and the feature network run, in full fp32; `backend`, `threads`:
            what runs G when `source` is a path (see `hetgan.load_generator`).

    Returns:
        A dict: `feature_space`, `n_generated`, and each metric (fid, kid, precision, recall,
        density, coverage, ...; for 2-D data modes, high_quality, reverse_kl).

    Raises:
        HetganError: a metric that does not apply, too few samples, a missing feature network.

    Example:
        >>> hetgan.evaluate("runs/00000-dcgan_mnist", n=2000)["fid"]
    """
    G = generator_from(source, device, backend, threads)
    if n is None:
        n = default_eval_n(G)
    return Evaluator(G.config, evalnet, seed, metrics, inception, device)(G, n)


def default_eval_n(G) -> int:
    """5000 samples of images, 2500 of 2-D points (PacGAN's protocol), 26,000 of Stacked MNIST
    (PacGAN's and VEEGAN's)."""
    if is_stacked(G.config):
        return STACKED_N
    return 2500 if len(G.shape) == 1 else 5000
