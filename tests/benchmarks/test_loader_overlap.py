import json

import pytest
import torch

from tests.benchmarks.records import assert_timed_against
from tests.conftest import benchmark_module, run_benchmark


@pytest.mark.slow
def test_loader_overlap_benchmark_compares_the_same_batches(tmp_path):
    """benchmarks/loader_overlap.py, tiny: its three loaders draw the same batches in the same
    order (so only where the data path runs differs), and each is timed against resident."""
    loader_overlap = benchmark_module("loader_overlap")
    args = loader_overlap.build_parser().parse_args(["--batch", "4", "--resolution", "32", "--channels", "1"])
    args.images, args.width = 10, 4
    trainers = loader_overlap.trainers(args, "cpu")
    assert type(trainers["inline"].sampler).__name__ == "InlineSampler"
    assert type(trainers["prefetch"].sampler).__name__ == "PrefetchSampler"
    batches = {name: [t.sampler.next(4) for _ in range(4)] for name, t in trainers.items()}  # past an epoch
    for name in ("prefetch", "inline"):
        assert all(torch.equal(a, b) for a, b in zip(batches["resident"], batches[name], strict=True)), name
    for trainer in trainers.values():
        trainer.close()

    args = ["--device", "cpu", "--rounds", "2", "--seconds", "0.2", "--json", str(tmp_path / "r.json")]
    args += ["--batch", "8", "--resolution", "32", "--channels", "1", "--images", "64", "--width", "4"]
    run_benchmark("loader_overlap", *args)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["device"] == "cpu" and list(record["loaders"]) == ["resident", "prefetch", "inline"]
    assert_timed_against(record["loaders"], "resident", rounds=2)
