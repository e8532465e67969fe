"""One rank of the data-parallel tests (tests/training/test_distributed.py), started by torchrun.

    torchrun --standalone --nproc-per-node 2 tests/training/distributed_worker.py CASES.json OUT_DIR

CASES.json maps a case name to {"config": TrainConfig as a dict, "steps": N, "dtype": "float32" |
"float64", "nan_at": [rank, step] or absent}. For each case this rank builds a Trainer in a
process group initialised before hetgan sees it (found by `distributed.setup`), trains N steps,
takes its state as a checkpoint would, and writes its whole state to OUT_DIR/CASE-rankR.safetensors with its counters
in OUT_DIR/CASE-rankR.json, for the test to compare with the other rank and a single process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from hetgan.config import from_dict
from hetgan.training import distributed
from hetgan.training.trainer import Trainer


def poison(trainer: Trainer, step: int) -> None:
    """Make this rank's real batch NaN in the D phases of `step` (0-based)."""
    next_batch = trainer.sampler.next

    def next_maybe_nan(batch_size: int) -> torch.Tensor:
        batch = next_batch(batch_size)
        return torch.full_like(batch, float("nan")) if trainer.step_count == step else batch

    trainer.sampler.next = next_maybe_nan


def run_case(name: str, case: dict, dist: distributed.Distributed, out: Path) -> None:
    torch.set_default_dtype(getattr(torch, case["dtype"]))
    try:
        trainer = Trainer(from_dict(case["config"]), dist=dist)
        if case.get("nan_at") and case["nan_at"][0] == dist.rank:
            poison(trainer, case["nan_at"][1])
        for _ in range(case["steps"]):
            trainer.step()
        tensors, meta = trainer.saved_state()
    finally:
        torch.set_default_dtype(torch.float32)
    stem = out / f"{name}-rank{dist.rank}"
    save_file({k: v.contiguous() for k, v in tensors.items()}, f"{stem}.safetensors")
    counters = {k: meta[k] for k in ("step", "nimg", "nonfinite_total")} | {"world": dist.world}
    Path(f"{stem}.json").write_text(json.dumps(counters))


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    # The group is made here, before hetgan sees it, as Ray Train or Lightning Fabric make theirs:
    # `setup` trains in it and leaves it to its owner.
    torch.distributed.init_process_group("gloo")
    try:
        group = distributed.setup(torch.device("cpu"))
        assert group.active and not group.owned
        for name, case in cases.items():
            run_case(name, case, group, out)
        group.close()
        assert torch.distributed.is_initialized()
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
