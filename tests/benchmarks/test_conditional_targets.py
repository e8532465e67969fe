"""Class-conditional GANs (model.conditional): the networks, labels from the data, training,
labelled sampling (CLI and Python), per-class evaluation, export, serving and compression."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_benchmark


@pytest.mark.slow
def test_conditional_targets_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/conditional_targets.py at a tiny scale, so that the script cannot rot."""
    args = ["--kimg", "0.3", "--small-kimg", "0.3", "--n", "100", "--seeds", "0", "--classifier-epochs", "1"]
    args += ["--synthetic-per-class", "20"]
    run_benchmark("conditional_targets", *args, "--out", str(tmp_path / "b"), "--json", str(tmp_path / "r.json"),
                  timeout=900)  # fmt: skip
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result) == {"conditional", "augmentation", "ada"} and result["augmentation"]["synthetic_n"] == 200
    assert 0 <= result["conditional"]["cdcgan_mnist"]["class_accuracy"] <= 1
    for row in result["augmentation"]["rows"].values():
        assert 0 < row["real_only"][0] <= 1 and 0 < row["real_plus_synthetic"][0] <= 1
    assert (tmp_path / "b" / "ada" / "ada_p.png").stat().st_size > 1000
