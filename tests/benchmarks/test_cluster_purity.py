"""benchmarks/cluster_purity.py: the purity of k-means clusters in each feature space."""

import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_cluster_purity_scores_pixels_and_d_features():
    out = run_benchmark("cluster_purity", "--k", "10", "50")
    rows = {row["space"]: row for row in map(json.loads, out.splitlines())}
    pixels, d_init = rows["pixels, 64 principal components (hetgan)"], rows["D at initialisation (cdcgan_mnist)"]
    for row in (pixels, d_init):
        # 10 balanced digits: purity is at least 0.1, and more clusters can only split them finer
        assert 0.1 <= row["k=10"] <= row["k=50"] <= 1
    assert pixels["k=50"] > d_init["k=50"]  # the reason hetgan clusters in the pixels
