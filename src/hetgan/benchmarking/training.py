"""`hetgan bench`: steady-state training speed of a config, where the time goes, and how close it
comes to the device's measured peak; with the textbook loop on the same model for comparison."""

from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from hetgan.accel import DTYPES
from hetgan.benchmarking.textbook import TextbookLoop
from hetgan.config import TrainConfig
from hetgan.data import ImageData
from hetgan.data.sources import Data
from hetgan.errors import ConfigError
from hetgan.models import build_models
from hetgan.training.rundir import provenance
from hetgan.training.trainer import Trainer


def synchronize(devices) -> None:
    """Wait until every accelerator among `devices` (CUDA, MPS, XPU) has run what was queued on
    it, so that a timer measures the work and not only its launch; the CPU runs ops as called."""
    for device in devices:
        if device.type != "cpu":
            torch.accelerator.synchronize(device)


class PhaseTimer:
    """Wall time per named phase; synchronises accelerators at each boundary so time lands in
    the phase that spent it (this slows the step a little: img/s is measured without it)."""

    def __init__(self, devices) -> None:
        self.devices = list(devices)
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str):
        synchronize(self.devices)
        start = time.perf_counter()
        yield
        synchronize(self.devices)
        self.totals[name] += time.perf_counter() - start


def trainer_devices(trainer: Trainer) -> set[torch.device]:
    return {p.device for net in (trainer.G, trainer.D) for p in net.parameters()}


def steady_img_per_s(trainer: Trainer, seconds: float, warmup_steps: int = 5) -> float:
    devices = trainer_devices(trainer)
    for _ in range(warmup_steps):  # first steps pay for allocation, autotuning and compilation
        trainer.step()
    synchronize(devices)
    start, nimg0 = time.perf_counter(), trainer.nimg
    while True:  # at least one step, however short the window
        trainer.step()
        if time.perf_counter() - start >= seconds:
            break
    synchronize(devices)
    return (trainer.nimg - nimg0) / (time.perf_counter() - start)


def interleaved(timers: dict[str, Callable[[bool], float]], rounds: int, on_round=None) -> dict[str, list[float]]:
    """Run each timer in turn, `rounds` times; a slow spell of the machine then lands on every
    setup rather than on one. A timer gets `warm=True` after its first window and returns img/s.
    `on_round(r, speeds)` after each round."""
    speeds: dict[str, list[float]] = {name: [] for name in timers}
    for r in range(rounds):
        for name, timer in timers.items():
            speeds[name].append(timer(r > 0))
        if on_round:
            on_round(r, speeds)
    return speeds


def trainer_timer(trainer: Trainer, seconds: float) -> Callable[[bool], float]:
    """A timer for `interleaved`: `seconds` of steady img/s, with warm-up steps before the first
    window only."""
    return lambda warm: steady_img_per_s(trainer, seconds, warmup_steps=0 if warm else 5)


def round_ratios(values: list[float], reference: list[float]) -> list[float]:
    """Each round's speed over the reference's in the same round."""
    return [v / r for v, r in zip(values, reference, strict=True)]


def ratio_spread(values: list[float], reference: list[float]) -> str:
    """'1.26x (1.21-1.31)': the median of the per-round ratios, then their min and max."""
    ratio = speed_record(values, reference)["ratio"]
    return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"


def speed_record(values: list[float], reference: list[float]) -> dict:
    """What a benchmark's `--json` says of one setup timed by `interleaved`: its speed per round
    and their median, and the per-round ratios over `reference` (median, min, max), as
    `ratio_spread` prints them."""
    ratios = round_ratios(values, reference)
    return {
        "rounds": list(values),
        "median": statistics.median(values),
        "ratio": {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)},
    }


def phase_breakdown(trainer: Trainer, steps: int = 10) -> dict[str, float]:
    """Milliseconds per step in each phase."""
    trainer.timer = PhaseTimer(trainer_devices(trainer))
    try:
        for _ in range(steps):
            trainer.step()
        return {name: 1000 * total / steps for name, total in trainer.timer.totals.items()}
    finally:
        trainer.timer = None


class FlopCount(TorchDispatchMode):
    """Total FLOPs of the ops run inside it, by torch.utils.flop_counter's per-op formulas.

    torch's FlopCounterMode also tracks which module each op belongs to, and that tracker's
    backward hooks fail under torch.autograd.grad (pytorch/pytorch#131753), which R1 and the
    WGAN-GP penalty call; only the total is needed here."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops_per_image(cfg: TrainConfig, data: Data | None = None) -> float:
    """FLOPs of one full training step (D and G phases, forward and backward, penalties
    included) per real image, counted on an eager copy of the config (on `data` if given, so
    a dataset already read is not read again)."""
    eager = copy.deepcopy(cfg)
    eager.accel.compile = eager.accel.cuda_graphs = False
    trainer = Trainer(eager, data)
    try:
        trainer.step()  # the first step creates optimiser state; count a steady one
        with FlopCount() as counter:
            trainer.step()
    finally:
        trainer.close()
    return counter.total / (cfg.train.batch_size * cfg.loss.n_critic)


def matmul_peak(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The device's dense matrix-product FLOP/s, measured on the spot with square products.

    The products grow from 256 to the full size (1024 on a CPU, 4096 on an accelerator) while one
    takes under a tenth of `seconds`: a dtype the device only emulates (bf16 on a CPU without bf16
    units runs a 1024 product in seconds) is timed at the size the window allows, at the same
    per-FLOP rate, instead of holding the caller for many windows."""
    full = 1024 if device.type == "cpu" else 4096  # large enough to fill an accelerator
    n = 256
    while True:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b  # warm-up: kernels chosen, memory touched
        synchronize([device])
        start = time.perf_counter()
        a @ b
        synchronize([device])
        if n >= full or time.perf_counter() - start > seconds / 10:
            break
        n *= 2
    for _ in range(2):
        a @ b
    synchronize([device])
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    synchronize([device])
    return 2 * n**3 * count / (time.perf_counter() - start)


def device_peak(device: torch.device, precision: str, seconds: float = 1.0) -> tuple[float, str]:
    """(FLOP/s, dtype name) of the fastest dense matrix product the device runs in the dtypes a
    run at `precision` uses: fp32 always, since autocast keeps some ops in fp32, and bf16 or fp16
    when asked for. On a CPU without bf16/fp16 units those products are far slower than fp32, and
    a share of their peak alone would exceed 100 %. Each dtype is timed for `seconds`."""
    peaks = {"fp32": matmul_peak(device, torch.float32, seconds)}
    if precision != "fp32":
        peaks[precision] = matmul_peak(device, DTYPES[precision], seconds)
    best = max(peaks, key=peaks.get)
    return peaks[best], best


def devices_peak(devices, precision: str, seconds: float = 1.0) -> dict[str, tuple[float, str]]:
    """{device: device_peak} for every device G and D use. With G and D on different devices the
    step can keep all of them busy, so a run's share of peak is taken against their sum."""
    return {str(d): device_peak(d, precision, seconds) for d in sorted(devices, key=str)}


def reset_peak_memory(trainer: Trainer) -> None:
    """Start `peak_memory`'s CUDA peaks afresh (the process's peak RSS cannot be)."""
    for device in trainer_devices(trainer):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


def peak_memory(trainer: Trainer) -> dict[str, float]:
    """MiB: allocator peak per CUDA device since `reset_peak_memory`; for the CPU the process's
    peak resident set."""
    out = {"cpu (process peak RSS)": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    for device in trainer_devices(trainer):
        if device.type == "cuda":
            out[str(device)] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def textbook_loop(cfg: TrainConfig, trainer: Trainer) -> TextbookLoop:
    """The textbook loop on the same model (fresh weights, the config's seed), data, batch and
    device as `trainer`; image data only."""
    torch.manual_seed(cfg.seed)
    G, D = build_models(cfg)
    images = torch.from_numpy(trainer.data.images).float().div(127.5).sub(1)
    return TextbookLoop(G, D, images, cfg.model.z_dim, cfg.train.batch_size, trainer.device)


def textbook_flops_per_image(cfg: TrainConfig, trainer: Trainer) -> float:
    """FLOPs of one steady textbook step per image (its G step also computes D's weight
    gradients, which hetgan's skips)."""
    loop = textbook_loop(cfg, trainer)
    (real,) = next(iter(loop.loader))
    loop.step(real)  # creates Adam's state
    with FlopCount() as counter:
        loop.step(real)
    return counter.total / cfg.train.batch_size


def check_timing(seconds: float, rounds: int) -> None:
    if not seconds > 0:
        raise ConfigError(f"--seconds must be more than 0, got {seconds}: give the timed seconds, e.g. --seconds 3")
    if rounds < 1:
        raise ConfigError(f"--rounds must be at least 1, got {rounds}: give the timing windows, e.g. --rounds 3")


def bench(cfg: TrainConfig | None = None, seconds: float = 10.0, textbook: bool = True, rounds: int = 3) -> dict:
    """Measure training speed (`hetgan bench`): steady img/s, phases, FLOPs, peak and memory.

    Args:
        cfg: the run to measure (default `TrainConfig()`, the default preset's config).
        seconds: timed seconds in all, over `rounds` windows; img/s is their median.
        textbook: also time the textbook loop on the same model (hetgan.benchmarking.textbook), in
            windows taken in turn with hetgan's; the ratio is the median of the per-round ratios.

    Returns:
        A dict: img_per_s (and its rounds), speedup_vs_textbook, phases, flops, memory, provenance;
        `format_bench(result)` is what the command prints.

    Raises:
        ConfigError: a bad config, seconds or rounds.

    Example:
        >>> hetgan.bench(hetgan.get_preset("dcgan_mnist"), seconds=5)["img_per_s"]
    """
    cfg = cfg if cfg is not None else TrainConfig()
    check_timing(seconds, rounds)
    trainer = Trainer(cfg)
    try:
        return measure(trainer, seconds, textbook, rounds)
    finally:
        trainer.close()


def measure(trainer: Trainer, seconds: float, textbook: bool, rounds: int) -> dict:
    """bench's measurements on a trainer built from its config."""
    cfg = trainer.cfg
    timers = {"hetgan": trainer_timer(trainer, seconds / rounds)}
    in_memory = isinstance(trainer.data, ImageData) and isinstance(trainer.data.images, np.ndarray)
    loop = textbook_loop(cfg, trainer) if textbook and in_memory else None  # not for 2-D points or streamed files
    if loop:
        loop.run_for(min(2.0, seconds / 4))  # warm-up: first batches, allocator, Adam state
        timers["textbook"] = lambda warm: loop.run_for(seconds / rounds)
    speeds = interleaved(timers, rounds)
    img_s = statistics.median(speeds["hetgan"])
    # A GPU's peak memory is taken over hetgan's own steady steps: the textbook loop's tensors are
    # freed first, and the FLOP count's trainer and the matrix-product probe come after.
    has_loop, loop, timers = loop is not None, None, None
    reset_peak_memory(trainer)
    phases = phase_breakdown(trainer)
    memory = peak_memory(trainer)
    flops = flops_per_image(cfg, trainer.data)
    # The probe runs for one timing window, a second at most: a short bench stays short.
    peaks = devices_peak(trainer_devices(trainer), cfg.accel.precision, min(1.0, seconds / rounds))
    peak = sum(flop_s for flop_s, _ in peaks.values())
    peak_dtype = ", ".join(sorted({dtype for _, dtype in peaks.values()}))
    result = {
        "preset": cfg.preset,
        "batch_size": cfg.train.batch_size,
        "device": str(trainer.device),
        **provenance(cfg, trainer.device),
        "accel": dict(vars(cfg.accel)),
        "img_per_s": img_s,
        "img_per_s_rounds": speeds["hetgan"],
        "phases_ms_per_step": phases,
        "peak_memory_mib": memory,
        "flops_per_image": flops,
        "achieved_flop_per_s": flops * img_s,
        "matmul_peak_flop_per_s": peak,
        "matmul_peak_dtype": peak_dtype,
        "matmul_peak_by_device": {device: flop_s for device, (flop_s, _) in peaks.items()},
        "share_of_peak": flops * img_s / peak,
    }
    if textbook:  # None where there is no textbook loop for the data (2-D points, streamed files)
        ratios = round_ratios(speeds["hetgan"], speeds["textbook"]) if has_loop else None
        result["textbook_img_per_s"] = statistics.median(speeds["textbook"]) if has_loop else None
        result["textbook_img_per_s_rounds"] = speeds.get("textbook")
        result["speedup_vs_textbook"] = statistics.median(ratios) if ratios else None
    return result


def windows(n: int) -> str:
    return "one timing window" if n == 1 else f"median of {n} windows"


def format_bench(r: dict) -> str:
    by_device = " + ".join(f"{d} {flop_s / 1e9:.1f}" for d, flop_s in r["matmul_peak_by_device"].items())
    lines = [
        f"bench: preset {r['preset']}, batch {r['batch_size']}, device {r['device']}",
        f"  img/s (steady state)      {r['img_per_s']:.1f}  ({windows(len(r['img_per_s_rounds']))})",
    ]
    if r.get("textbook_img_per_s"):
        lines.append(
            f"  textbook loop img/s       {r['textbook_img_per_s']:.1f}  (hetgan {r['speedup_vs_textbook']:.2f}x, "
            "median of the per-round ratios)"
        )
    lines += [
        f"  FLOPs per image           {r['flops_per_image'] / 1e6:.2f} M (one D + G step)",
        f"  achieved                  {r['achieved_flop_per_s'] / 1e9:.2f} GFLOP/s",
        f"  matmul peak (measured)    {r['matmul_peak_flop_per_s'] / 1e9:.2f} GFLOP/s ({r['matmul_peak_dtype']}"
        + (f"; {by_device})" if len(r["matmul_peak_by_device"]) > 1 else ")"),
        f"  share of peak             {r['share_of_peak']:.1%}",
        "  phase breakdown (ms/step):",
    ]
    total = sum(r["phases_ms_per_step"].values())
    for name, ms in sorted(r["phases_ms_per_step"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {name:<22}{ms:>9.2f}  {ms / total:>6.1%}")
    lines.append("  peak memory (MiB):")
    lines += [f"    {name:<22}{mib:>9.1f}" for name, mib in r["peak_memory_mib"].items()]
    return "\n".join(lines)
