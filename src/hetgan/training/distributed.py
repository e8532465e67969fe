"""Data parallelism: the one place that knows ranks.

`hetgan train` under `torchrun` (or inside a process group that Ray Train, Lightning Fabric or the
user already initialised) trains data-parallel: NCCL between GPUs, gloo on the CPU. Every rank
holds the whole of G, D and G_ema and the same random streams; `train.batch_size` is the global
batch, and each rank computes on its slice of it.

Why not torch's DistributedDataParallel. A GAN step breaks its assumptions: D's parameters take
gradients in the D phase and none in the G phase (they are frozen while G's loss runs through D),
R1 and WGAN-GP run a double backward that DDP's reducer hooks do not follow, `n_critic` D phases
run before each G phase, and BatchNorm buffers would be broadcast from rank 0 in the middle of a
step. As StyleGAN3 does, each phase instead ends with one flat all-reduce of its optimiser's
gradients (`average_gradients`), after the backward, whatever the loss, the regulariser, the
placement of the stages or the precision did to produce them. That is correct for every loss
hetgan has, since each is a mean over the batch: the mean of the ranks' means over equal slices
is the mean over the global batch.

Sameness across ranks is kept, not repaired:
- z, the augmentation draws, the gradient-penalty mixing and the data order are drawn for the
  global batch from streams seeded alike on every rank, and each rank takes its part (`Shard`).
  A run's trajectory then does not depend on the number of ranks beyond round-off and beyond
  BatchNorm, which normalises by each rank's own slice (SyncBatchNorm would share the statistics,
  but it runs on GPUs only, so gloo cannot).
- Every decision that ends or skips work is agreed: a phase whose loss is non-finite on any rank
  is skipped on all (`any`), and a SIGINT/SIGTERM that reached one rank stops all after the same
  step (`any_host`). An early return on one rank alone would leave the others waiting forever in
  their next collective.
- Before each checkpoint, BatchNorm's running statistics are averaged over the ranks and the
  state is checked equal on every rank (`Trainer.saved_state`); rank 0 alone writes.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
from collections.abc import Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from hetgan.errors import ConfigError, HetganError
from hetgan.shard import Shard

log = logging.getLogger("hetgan")

# A collective waits this long for the other ranks (rank 0's evaluation or final outputs included)
# before it fails with an error instead of hanging.
TIMEOUT = datetime.timedelta(minutes=30)


class Distributed:
    """A process group and the collectives a training step needs, or, with no group, a single
    process for which every collective is a no-op."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, backend: str = "", owned: bool = False):
        self.shard = Shard(rank, world)
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.backend = backend  # "" without a process group
        self.owned = owned  # this process initialised the group, and destroys it at the end
        # NCCL reduces CUDA tensors only, gloo any; host-side flags always go over gloo, so that
        # agreeing on a stop does not wait for the GPU's queue.
        self.comm_device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else None
        self.host_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend == "nccl" else None
        self._prefix: logging.Filter | None = None

    @property
    def active(self) -> bool:
        return bool(self.backend)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def __repr__(self) -> str:
        return f"rank {self.rank}/{self.world} ({self.backend})" if self.active else "single process"

    # --- set-up and teardown ------------------------------------------------------------------
    def localize(self, device: torch.device) -> torch.device:
        """A CUDA device named without an index ("cuda", "auto") is this rank's GPU, LOCAL_RANK;
        a device with an index is taken as given."""
        if self.active and device.type == "cuda" and device.index is None:
            return torch.device("cuda", self.local_rank)
        return device

    def name_logs(self) -> None:
        """Prefix the "hetgan" logger's lines with the rank and world size."""
        if self.active and self._prefix is None:
            tag = f"[rank {self.rank}/{self.world}] "

            class Prefix(logging.Filter):
                def filter(self, record: logging.LogRecord) -> bool:
                    if not str(record.msg).startswith(tag):
                        record.msg = tag + str(record.msg)
                    return True

            self._prefix = Prefix()
            log.addFilter(self._prefix)

    def close(self) -> None:
        if self._prefix is not None:
            log.removeFilter(self._prefix)
            self._prefix = None
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()

    def sync_batch_norm(self, net: nn.Module, wanted: bool) -> nn.Module:
        """`net` with SyncBatchNorm for its BatchNorm layers where `wanted` (accel.sync_batchnorm) on
        NCCL ranks. One rank's BatchNorm already sees the global batch: `net` as it is."""
        if not wanted or self.world == 1:
            return net
        if self.backend != "nccl":
            raise ConfigError(
                "accel.sync_batchnorm shares BatchNorm's statistics between ranks with torch's "
                "SyncBatchNorm, which runs on CUDA only, so a gloo (CPU) run cannot; drop --set "
                "accel.sync_batchnorm=true (each rank then normalises by its own slice of the batch)"
            )
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)

    # --- agreement ------------------------------------------------------------------------------
    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace each parameter's gradient by its mean over the ranks: one flat all-reduce per
        device the parameters sit on (a network split into stages has several)."""
        if not self.active:
            return
        by_device: dict[torch.device, list[torch.Tensor]] = {}
        for p in params:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p.grad)
        for device in sorted(by_device, key=str):  # the same order on every rank
            grads = by_device[device]
            flat = _flatten_dense_tensors(grads).to(self.comm_device or device)
            dist.all_reduce(flat)
            flat.div_(self.world)
            for g, synced in zip(grads, _unflatten_dense_tensors(flat.to(device), grads), strict=True):
                g.copy_(synced)

    def any(self, flag: bool | torch.Tensor) -> bool | torch.Tensor:
        """Whether `flag` is set on any rank: a bool for a bool; for a tensor (a flag left on the
        device, see Trainer._nonfinite), a tensor on the same device, reduced without a host wait."""
        if not self.active:
            return flag
        if not torch.is_tensor(flag):
            return self.any_host(flag)
        t = flag.to(self.comm_device or flag.device, torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.to(flag.device).bool()

    def any_host(self, flag: bool) -> bool:
        if not self.active:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.host_group)
        return bool(t.item())

    def mean_floats(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over the ranks (the losses a log line shows)."""
        if not self.active or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t, group=self.host_group)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist(), strict=True)}

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.host_group)

    def from_main(self, work: Callable[[], str]) -> str:
        """Run `work` on rank 0 and hand its text result to every rank. An error on rank 0 is raised
        there and, as a HetganError naming it, on the others, instead of leaving them waiting."""
        if not self.active:
            return work()
        message, error = "", None
        if self.is_main:
            try:
                message = "ok\n" + work()
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the others are told
                error, message = e, f"error\n{type(e).__name__}: {e}"
        status, _, text = self._broadcast_text(message).partition("\n")
        if error is not None:
            raise error
        if status != "ok":
            raise HetganError(f"rank 0 failed, so this rank stops too: {text}")
        return text

    def _broadcast_text(self, text: str) -> str:
        """Rank 0's `text` on every rank (as bytes: nothing is unpickled)."""
        data = text.encode() if self.is_main else b""
        size = torch.tensor([len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0, group=self.host_group)
        if self.is_main:
            buf = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            buf = torch.empty(int(size), dtype=torch.uint8)
        if int(size):
            dist.broadcast(buf, src=0, group=self.host_group)
        return bytes(buf.numpy()).decode()

    def check_same(self, what: str, tensors: Iterable[torch.Tensor]) -> None:
        """Raise, naming `what`, if `tensors` differ (bitwise) between the ranks: the state rank 0 is
        about to save must be every rank's, or a restart would change the run."""
        if not self.active:
            return
        digest = hashlib.sha256()
        for t in tensors:
            digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        mine = torch.frombuffer(bytearray(digest.digest()), dtype=torch.uint8)
        gathered = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(gathered, mine, group=self.host_group)
        differ = [r for r, g in enumerate(gathered) if not torch.equal(g, gathered[0])]
        if differ:
            raise RuntimeError(
                f"{what} differs between rank 0 and rank(s) {differ}: the ranks no longer train the same "
                "model (different configs or code on different nodes?)"
            )

    def average_buffers(self, module: nn.Module) -> None:
        """BatchNorm's running statistics averaged over the ranks (each rank's come from its own
        slice of the batches); integer buffers (batch counts) are the same on every rank."""
        if not self.active:
            return
        for b in module.buffers():
            if b.is_floating_point():
                t = b.detach().to(self.comm_device or b.device)
                dist.all_reduce(t)
                b.copy_(t.div_(self.world))


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets its variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def restart_store() -> dist.Store | None:
    """torchrun's own key-value store, with this restart's keys kept apart from earlier attempts'.

    torchrun lets the workers share the store its agent hosts, and a group restarted after a
    worker died (--max-restarts) read the dead worker's gloo address from it: "Gloo connectFullMesh
    failed ... Connection refused" (pytorch/pytorch#135712; seen here with torch 2.13). Keys under
    a prefix named for the restart count, which the agent gives every worker it (re)starts, cannot
    be stale. None where torchrun does not share its store (init_process_group's env:// then).
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(host, port, is_master=False, timeout=TIMEOUT)
    return dist.PrefixStore(f"hetgan/restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def setup(device: torch.device) -> Distributed:
    """The process group this process trains in: an existing one, one made from torchrun's
    environment (NCCL for CUDA, else gloo), or none (a single process)."""
    if not dist.is_available():
        return Distributed()
    owned = False
    if not dist.is_initialized():
        if not launched():
            return Distributed()
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        store = restart_store()
        if store is None:
            dist.init_process_group(backend, timeout=TIMEOUT)
        else:
            rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
            dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=TIMEOUT)
        owned = True
    backend = dist.get_backend()
    if backend not in ("nccl", "gloo"):
        raise HetganError(f"the process group's backend is {backend!r}; hetgan trains over nccl or gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank() % max(torch.cuda.device_count(), 1)))
    if backend == "nccl" and not owned:
        torch.cuda.set_device(local_rank)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, backend, owned)
