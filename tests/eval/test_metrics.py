import math

import numpy as np
import pytest
import scipy.linalg
import torch

from hetgan.config import DataConfig, TrainConfig
from hetgan.data import load_data
from hetgan.eval import metrics as M
from hetgan.eval.score import Evaluator


def scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@pytest.mark.parametrize("shift", [0.0, 0.3, 2.0])
def test_fid_matches_scipy_reference(shift):
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(size=(2000, 16)) * 1.3 + shift
    assert M.fid(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6)


def test_fid_of_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(M.fid(a, a)) < 1e-8


def test_kid_is_unbiased_and_fid_is_not():
    rng = np.random.default_rng(0)
    means = [M.kid(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), n_subsets=20, subset_size=100)[0]
             for _ in range(30)]  # fmt: skip
    spread = np.std(means) / np.sqrt(len(means))
    assert abs(np.mean(means)) < 3 * spread  # unbiased: zero within its standard error
    assert M.fid(rng.normal(size=(200, 8)), rng.normal(size=(200, 8))) > 0.01  # FID is biased upward
    far = M.kid(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1, n_subsets=5, subset_size=100)[0]
    assert far > 10 * abs(np.mean(means))


def test_kid_is_the_unbiased_mmd_of_the_cubic_kernel_written_out():
    """KID against its definition written out pair by pair, on the same subsets: the kernel is
    computed in place with two products instead of a power, a rounding or two per entry
    (1e-16 each), so the two agree to far better than 1e-12."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(40, 5)) + 0.3
    m, d, values = 20, 5, []
    pick = np.random.default_rng(7)
    for _ in range(3):
        x, y = a[pick.choice(30, m, replace=False)], b[pick.choice(40, m, replace=False)]
        k = lambda u, v: (float(np.dot(u, v)) / d + 1) ** 3  # noqa: E731
        xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
        values.append(xx + yy - 2 * xy)
    mean, std = M.kid(a, b, n_subsets=3, subset_size=m, seed=7)
    assert mean == pytest.approx(np.mean(values), rel=1e-12) and std == pytest.approx(np.std(values), rel=1e-9)


def test_the_feature_cache_keeps_the_newest_within_its_budget_and_lives_where_the_environment_says(
    monkeypatch, tmp_path
):
    """Past DISK_BUDGET_BYTES the least recently used files go first (a read counts as a use); the
    folder is $HETGAN_CACHE_DIR, else $XDG_CACHE_HOME/hetgan, else ~/.cache/hetgan."""
    import os

    from hetgan.eval import feature_cache

    monkeypatch.setenv("HETGAN_CACHE_DIR", str(tmp_path / "c"))
    net = torch.nn.Linear(2, 2)
    arrays = {i: np.full((10, 4), i, np.float32) for i in range(4)}
    images = {i: np.full((10, 1, 2, 2), i, np.uint8) for i in range(4)}
    for i in range(3):
        feature_cache.cached_features(net, images[i], lambda i=i: arrays[i])
    folder = tmp_path / "c" / "real-features"
    files = {i: folder / f"{feature_cache.feature_key(net, images[i])}.npy" for i in range(4)}
    monkeypatch.setattr(feature_cache, "DISK_BUDGET_BYTES", 3 * files[0].stat().st_size)  # room for 3
    for age, i in enumerate((0, 1, 2)):  # file 0 the oldest, by a second each
        os.utime(files[i], (1000 + age, 1000 + age))
    feature_cache.forget_in_memory()
    feature_cache.cached_features(net, images[0], lambda: pytest.fail("on disk"))  # used: the newest again
    feature_cache.cached_features(net, images[3], lambda: arrays[3])  # over budget: the oldest goes
    assert {i for i, f in files.items() if f.exists()} == {0, 2, 3}
    monkeypatch.delenv("HETGAN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert feature_cache.hetgan_cache_dir() == tmp_path / "xdg" / "hetgan"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert feature_cache.hetgan_cache_dir() == tmp_path / "home" / ".cache" / "hetgan"


def test_precision_recall_density_coverage_extremes():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 4))
    assert M.precision_recall(real, real.copy()) == (1.0, 1.0)
    far = real + 100
    assert M.precision_recall(real, far) == (0.0, 0.0)
    assert M.density_coverage(real, far) == (0.0, 0.0)
    density, coverage = M.density_coverage(real, real.copy(), k=5)
    assert coverage == 1.0 and density == pytest.approx(1.0, abs=0.25)
    # A generator that covers only half of the real data: precision stays high, recall drops.
    half = real[real[:, 0] > 0]
    p, r = M.precision_recall(real, half)
    assert p == 1.0 and r < 0.75


def test_knn_radii_for_several_k_are_each_ks_own():
    """One pass over the distances gives each k's radii, the (k+1)-th smallest distance of each row
    (the point itself is the first), ties included: picked, not computed, so equal to the bit."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, size=(40, 2)).astype(np.float64)  # many equal distances
    d = torch.cdist(torch.from_numpy(x), torch.from_numpy(x))  # one block, as knn_radii computes it
    radii = M.knn_radii_for(x, [5, 3, 5])
    assert list(radii) == [3, 5]
    for k in (3, 5):
        assert torch.equal(radii[k], d.sort(dim=1).values[:, k]) and torch.equal(M.knn_radii(x, k), radii[k])
    real, fake = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    given = M.knn_radii_for(real, (M.PR_K, M.DC_K))
    assert M.precision_recall(real, fake, real_radii=given[M.PR_K]) == M.precision_recall(real, fake)
    assert M.density_coverage(real, fake, real_radii=given[M.DC_K]) == M.density_coverage(real, fake)


def cdist_rounding(*sets: np.ndarray) -> float:
    """A bound on the relative round-off of a distance as torch.cdist computes it in float64 (its
    matrix-product form: |a|^2 + |b|^2 - 2 a.b, whose blocking and so rounding depend on the matrix
    shapes and the machine's BLAS): each term carries about (dim + 2) units of round-off of
    |a|^2 + |b|^2, which the subtraction leaves on d^2, and the square root halves. A mean over N
    distances adds N units more. Blocked and whole may each be off by it, hence twice."""
    x = np.concatenate(sets)
    dim, eps = x.shape[1], np.finfo(np.float64).eps
    sq = (x**2).sum(1)
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    off = ~np.eye(len(x), dtype=bool)
    worst = ((sq[:, None] + sq[None])[off] / d2[off]).max()
    return 2 * ((dim + 2) * eps * worst / 2 + len(x) ** 2 * eps)


def test_knn_metrics_in_blocks_equal_the_whole_matrix(monkeypatch):
    """The k-NN metrics hold at most BLOCK_ENTRIES distances at once (a row at least), and give
    the numbers of the whole distance matrix."""
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(60, 5)), rng.normal(0.3, 1.2, size=(45, 5))

    def scores():
        return (
            *M.precision_recall(real, fake),
            *M.density_coverage(real, fake),
            M.mean_pairwise_distance(fake),
            M.knn_radii(real, 3),
        )

    whole = scores()
    sizes = []
    distances = M._distances
    monkeypatch.setattr(M, "_distances", lambda a, b: sizes.append(len(a) * len(b)) or distances(a, b))
    monkeypatch.setattr(M, "BLOCK_ENTRIES", 200)  # 3 or 4 rows of 60 or 45 columns
    blocked = scores()
    assert max(sizes) <= 200 and len(sizes) > 4 * 4
    rel = cdist_rounding(real, fake)
    assert blocked[:5] == pytest.approx(whole[:5], rel=rel)
    assert torch.allclose(blocked[5], whole[5], rtol=rel, atol=0)
    assert all(0 < s < 1 for s in (*whole[:2], whole[3]))  # precision, recall, coverage: not trivially 0 or 1


def test_mode_metrics_hand_built():
    modes = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    sigma = 0.1
    points = np.array([[0.05, 0.0]] * 6 + [[10.0, 0.1]] * 2 + [[5.0, 5.0]] * 2)  # 2 bad, mode 3/4 missed
    r = M.mode_metrics(points, modes, sigma)
    assert r["modes_captured"] == 2 and r["high_quality"] == pytest.approx(0.8)
    assert r["mode_counts"] == [6, 2, 0, 0]
    p = np.array([6, 2]) / 8
    assert r["reverse_kl"] == pytest.approx(float((p * np.log(p / 0.25)).sum()))
    uniform = M.mode_metrics(np.repeat(modes, 5, axis=0), modes, sigma)
    assert uniform["modes_captured"] == 4 and uniform["reverse_kl"] == pytest.approx(0.0)
    # No sample near any mode: no histogram, and the worst score rather than a perfect 0.
    lost = M.mode_metrics(np.full((10, 2), 5.0), modes, sigma)
    assert lost["high_quality"] == 0 and lost["modes_captured"] == 0 and lost["reverse_kl"] == math.inf


@pytest.mark.parametrize("spec", ["ring8", "grid25"])
def test_real_mixture_scores_the_analytic_ceiling(spec):
    # A 2-D Gaussian sample lies within 3 sigma of its centre with probability 1 - exp(-9/2) =
    # 98.89 %, so even the real distribution scores that "high quality", not 100 %.
    data = load_data(DataConfig(spec=spec))
    g = np.random.default_rng(0)
    points = data.modes[g.integers(len(data.modes), size=20_000)] + g.normal(size=(20_000, 2)) * data.sigma
    r = M.mode_metrics(points, data.modes, data.sigma)
    ceiling = 1 - np.exp(-4.5)
    assert r["high_quality"] == pytest.approx(ceiling, abs=4 * np.sqrt(ceiling * (1 - ceiling) / 20_000))
    assert r["modes_captured"] == len(data.modes) and r["reverse_kl"] < 0.005


def test_class_histogram_and_diversity():
    probs = np.eye(10)[[0, 0, 3, 9]] * 0.9 + 0.01
    h = M.class_histogram(probs, 10)
    assert h["classes_covered"] == 3 and h["class_counts"][0] == 2
    real = np.random.default_rng(0).normal(size=(100, 4))
    collapsed = np.repeat(real[:1], 100, axis=0)
    assert M.diversity(collapsed, real) == 0.0 and M.diversity(real, real) == pytest.approx(1.0)


@pytest.mark.slow
def test_digit_fid_real_halves_near_zero_noise_far():
    """FID (digits) of two halves of the digits is near zero, of the digits and noise far from it.
    The digits' features are the ones every evaluation of them uses (the suite embeds them once)."""
    evaluator = Evaluator(TrainConfig())  # the bundled digits, as `hetgan eval` scores the default preset
    net = evaluator.net
    assert net.cfg.held_out_accuracy >= 0.98 and len(evaluator.real) == 5000
    assert net.body[1][0].weight.is_contiguous(memory_format=torch.channels_last)  # oneDNN's layout on a CPU
    feats, held = evaluator.real[::2], evaluator.real[1::2]
    noise = net.embed(torch.rand(2500, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)[0]
    real_vs_real, real_vs_noise = M.fid(feats, held), M.fid(feats, noise)
    assert real_vs_real < 0.02 * real_vs_noise, (real_vs_real, real_vs_noise)


def test_quality_warnings_say_collapse_and_missing_classes_or_modes():
    """The issue's collapsed run (1997 of 2000 samples one digit) is said, with what to try; a
    generator that draws every class alike is not; missing modes of a mixture are."""
    from hetgan.cli.sample import format_table
    from hetgan.eval.metrics import quality_warnings

    collapsed = {"class_counts": [0] * 8 + [1997, 3]}
    [collapse, missing] = quality_warnings(collapsed)
    assert collapse.startswith("mode collapse: 100% of the 2000 samples are classified as class 8")
    assert "gives 10 %" in collapse and "optim.g_lr" in collapse
    assert missing.startswith("classes never drawn in 2000 samples: [0, 1, 2, 3, 4, 5, 6, 7]")
    assert quality_warnings({"class_counts": [200] * 10}) == []
    assert quality_warnings({"class_counts": [310] + [190] * 9}) == []  # 14 %: uneven, not collapsed
    assert len(quality_warnings({"class_counts": [700] + [100] * 3})) == 0  # 70 % of 4 classes: under 3/4
    assert quality_warnings({"class_counts": [10, 0, 10]}) == []  # too few samples to call a class missing
    [modes] = quality_warnings({"modes_captured": 6, "modes_total": 8, "high_quality": 0.9})
    assert modes.startswith("modes missed: 2 of 8")
    table = format_table({"feature_space": "digits", "fid": 2370.0, "warnings": [collapse]}).splitlines()
    assert table[0] == f"WARNING: {collapse}" and table[1] == "feature space: digits" and "warnings" not in table[-1]


def test_real_features_are_embedded_once_per_network_and_images(monkeypatch, tmp_path):
    """Evaluators of the same data under the same network share one embedding of the real images,
    in one process and, through the disk cache, in the next; other weights or other pixels compute
    afresh, and the shared array cannot be changed."""
    import copy

    import numpy as np
    import torch

    from hetgan.eval import feature_cache, score
    from hetgan.eval.evalnet import EvalNet, EvalNetConfig

    embed, calls = score.real_features, []
    monkeypatch.setattr(score, "real_features", lambda net, images: calls.append(1) or embed(net, images))
    monkeypatch.setenv("HETGAN_CACHE_DIR", str(tmp_path / "cache"))
    feature_cache.forget_in_memory()
    torch.manual_seed(0)
    net = EvalNet(EvalNetConfig(width=4, feature_dim=8)).eval()
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 32, 32), dtype=np.uint8)
    first = score.cached_real_features(net, images)
    assert np.array_equal(first, embed(net, images)) and not first.flags.writeable
    assert score.cached_real_features(net, images.copy()) is first and len(calls) == 1  # same pixels, same weights
    feature_cache.forget_in_memory()  # as a new process: the features come from disk, bit for bit
    [cached] = (tmp_path / "cache" / "real-features").glob("*.npy")
    again = score.cached_real_features(net, images)
    assert again is not first and np.array_equal(again, first) and len(calls) == 1 and not again.flags.writeable
    other = images.copy()
    other[0, 0, 0, 0] ^= 1
    assert score.cached_real_features(net, other) is not first and len(calls) == 2
    weights = copy.deepcopy(net.state_dict())
    with torch.no_grad():
        net.head.weight[0, 0] += 1  # weights the features do not even use still make a new key
    score.cached_real_features(net, images)
    assert len(calls) == 3 and len(list(cached.parent.glob("*.npy"))) == 3
    net.load_state_dict(weights)  # the first weights again: their file, cut short or empty, is not trusted
    for broken in (cached.read_bytes()[:100], b""):
        cached.write_bytes(broken)
        feature_cache.forget_in_memory()
        computed = len(calls)
        assert np.array_equal(score.cached_real_features(net, images), first) and len(calls) == computed + 1
        feature_cache.forget_in_memory()
        assert (
            np.array_equal(score.cached_real_features(net, images), first) and len(calls) == computed + 1
        )  # rewritten
    monkeypatch.setenv("HETGAN_CACHE_DIR", "off")  # in memory only
    feature_cache.forget_in_memory()
    score.cached_real_features(net, images)
    assert len(calls) == 6 and len(list(cached.parent.glob("*.npy"))) == 3
