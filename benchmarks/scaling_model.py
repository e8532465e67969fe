"""Data-parallel efficiency: what a step costs, what its gradient all-reduces cost, and a model that
predicts the efficiency on N devices from those figures and a link's bandwidth and latency.

    python benchmarks/scaling_model.py [--preset dcgan_textbook] [--batch 64] [--steps 40]
                                       [--device cpu|cuda] [--nproc 2] [--gpu-step-ms MS]
                                       [--plot scaling.png]

Two CPU ranks on a 2-core machine cannot beat one process (each rank gets one core), so this
measures what can be measured and checks the model against it:
1. one process, one thread, the per-rank batch: compute time per step, T_c;
2. `--nproc` ranks under torchrun (gloo on the CPU, NCCL on GPUs), the global batch: the step time
   T_N, the time in the gradient all-reduces (hetgan's own phases), and a raw all-reduce
   micro-benchmark at the step's message sizes, from which the link's latency alpha and bandwidth
   beta are fitted (T(bytes) = alpha + bytes / beta);
3. the model: T_N = T_c + sum over the step's all-reduces of the ring cost
   2 (N-1) alpha + 2 (N-1)/N bytes / beta; its prediction for the measured N against the
   measurement, and its predictions for 1-16 devices on the measured link and on the links of
   common GPU machines (nominal figures, stated as such), with T_c = --gpu-step-ms for those.

Weak scaling: the per-device batch stays fixed and the global batch grows with N (efficiency =
T_c / T_N). A step all-reduces D's gradients in each of its n_critic D phases and G's in its G
phase, plus a 4-byte flag per phase (a non-finite loss on any rank skips the phase on all) and
one per step (a stop signal on any rank stops all).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hetgan.benchmarking.training import PhaseTimer, synchronize, trainer_devices
from hetgan.presets import get_preset
from hetgan.training import distributed
from hetgan.training.trainer import Trainer

# Nominal all-reduce figures for GPU machines (not measured here): bus bandwidth as nccl-tests
# reports it for large messages, and a per-hop latency.
LINKS = {
    "NVLink 4 (8x H100 SXM, one node)": (360e9, 10e-6),
    "PCIe 4 x16, no NVLink": (20e9, 15e-6),
    "InfiniBand 400 Gb/s (across nodes)": (40e9, 20e-6),
    "Ethernet 25 Gb/s (across nodes)": (2.5e9, 50e-6),
}


def config(args: argparse.Namespace, batch: int):
    cfg = get_preset(args.preset)
    cfg.train.batch_size = batch
    cfg.accel.device = args.device
    return cfg


def timed_steps(trainer: Trainer, steps: int, warmup: int = 5) -> float:
    """Seconds per step over `steps` steps (a fixed count: every rank must take the same steps)."""
    for _ in range(warmup):
        trainer.step()
    devices = trainer_devices(trainer)
    synchronize(devices)
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    trainer.count_skipped()
    synchronize(devices)
    return (time.perf_counter() - start) / steps


def gradient_bytes(trainer: Trainer) -> tuple[int, int]:
    """Bytes all-reduced in a D phase and in a G phase."""
    size = lambda net: sum(p.numel() * p.element_size() for p in net.parameters())  # noqa: E731
    return size(trainer.D), size(trainer.G)


def allreduce_seconds(nbytes: int, device: torch.device, repeats: int = 30) -> float:
    """Median seconds of one all-reduce of `nbytes` (float32) between the ranks."""
    t = torch.zeros(max(nbytes // 4, 1), device=device)
    times = []
    for _ in range(repeats + 3):
        synchronize([device])
        start = time.perf_counter()
        dist.all_reduce(t)
        synchronize([device])
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[repeats // 2]


def worker(args: argparse.Namespace) -> None:
    """One rank: the step time, the step's all-reduce time, and the raw all-reduce figures."""
    group = distributed.setup(torch.device(args.device if args.device != "auto" else "cpu"))
    try:
        trainer = Trainer(config(args, args.batch), dist=group)
        step = timed_steps(trainer, args.steps)
        trainer.timer = PhaseTimer(trainer_devices(trainer))  # the all-reduce phases, timed apart
        timed_steps(trainer, args.steps, warmup=0)
        totals = trainer.timer.totals
        in_allreduce = (totals["d_allreduce"] + totals["g_allreduce"]) / args.steps
        d_bytes, g_bytes = gradient_bytes(trainer)
        device = group.comm_device or torch.device("cpu")
        raw = {n: allreduce_seconds(n, device) for n in (4, g_bytes, d_bytes, 4 * max(g_bytes, d_bytes))}
        if group.is_main:
            record = {
                "world": group.world,
                "backend": group.backend,
                "step_s": step,
                "allreduce_in_step_s": in_allreduce,
                "n_critic": trainer.loss.n_critic,
                "d_bytes": d_bytes,
                "g_bytes": g_bytes,
                "raw": raw,
            }
            Path(args.worker).write_text(json.dumps(record))
        trainer.close()
    finally:
        group.close()


def fit_link(raw: dict[int, float], world: int) -> tuple[float, float]:
    """(bandwidth B/s, latency s) of a ring all-reduce that fits the micro-benchmark: the 4-byte
    message gives the latency, the largest the bandwidth."""
    hops = 2 * (world - 1)
    alpha = raw[min(raw)] / hops
    largest = max(raw)
    beta = hops / world * largest / max(raw[largest] - hops * alpha, 1e-9)
    return beta, alpha


def allreduce_model(nbytes: int, world: int, beta: float, alpha: float) -> float:
    if world == 1:
        return 0.0
    return 2 * (world - 1) * alpha + 2 * (world - 1) / world * nbytes / beta


def step_model(compute_s: float, world: int, m: dict, beta: float, alpha: float) -> float:
    """Predicted seconds per step on `world` devices: compute + the step's all-reduces."""
    comm = m["n_critic"] * allreduce_model(m["d_bytes"], world, beta, alpha) + allreduce_model(
        m["g_bytes"], world, beta, alpha
    )
    flags = (m["n_critic"] + 2) * allreduce_model(4, world, beta, alpha)
    return compute_s + comm + flags


def run_group(cmd: list[str], timeout: float) -> None:
    """Run torchrun in a process group of its own; past `timeout`, kill the whole group: killing
    torchrun alone (what subprocess.run's timeout does) would leave its ranks running."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise SystemExit(f"torchrun did not finish within {timeout:g} s; it and its ranks were killed") from None
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stderr=err)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dcgan_textbook")
    parser.add_argument("--batch", type=int, default=64, help="the global batch of the measured run")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument(
        "--gpu-step-ms",
        type=float,
        default=1000 * 64 / 9566,
        help="a GPU's step time at the per-device batch, for the GPU predictions (default: the "
        "H100's eager fp32 DCGAN-32 step at batch 64, benchmarks/RESULTS.md)",
    )
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also plot the predicted efficiencies")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank writing its figures to this file
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    local = args.batch // args.nproc
    if args.device == "cpu" and args.nproc > 1:
        torch.set_num_threads(1)  # as each torchrun rank has (torchrun sets OMP_NUM_THREADS=1)
    single = Trainer(config(args, local))
    compute = timed_steps(single, args.steps)
    single.close()
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"scaling-{os.getpid()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
    cmd += [__file__, "--worker", str(out), "--preset", args.preset, "--batch", str(args.batch)]
    cmd += ["--steps", str(args.steps), "--device", args.device]
    run_group(cmd, timeout=1800)
    m = json.loads(out.read_text())
    out.unlink()
    m["raw"] = {int(k): v for k, v in m["raw"].items()}
    rows = report(args, local, compute, m)
    print()
    gpu = args.gpu_step_ms / 1e3
    worlds = (1, 2, 4, 8, 16)
    print(
        f"predicted efficiency (T_c / T_N) at the per-device batch, T_c = {gpu * 1e3:.2f} ms (GPU) or measured (here)"
    )
    print(f"{'link':<40}" + "".join(f"{n:>7}" for n in worlds))
    rows |= {name: (bw, lat, gpu) for name, (bw, lat) in LINKS.items()}
    efficiency = {name: [t_c / step_model(t_c, n, m, bw, lat) for n in worlds] for name, (bw, lat, t_c) in rows.items()}
    for name, values in efficiency.items():
        print(f"{name:<40}" + "".join(f"{e:>7.0%}" for e in values))
    if args.plot:
        measured = (m["world"], compute / m["step_s"])
        args.plot.write_bytes(plot(worlds, efficiency, measured, f"{args.preset}, batch {local} per device"))
        print(f"plot: {args.plot}")


def plot(worlds: tuple[int, ...], efficiency: dict[str, list[float]], measured: tuple[int, float], title: str) -> bytes:
    """The predicted weak-scaling efficiency against the number of devices, a line per link, and
    the efficiency measured here as a point, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, values in efficiency.items():
        ax.plot(worlds, [100 * e for e in values], marker="o", markersize=3, label=name)
    ax.scatter([measured[0]], [100 * measured[1]], marker="*", s=140, color="black", zorder=3, label="measured here")
    ax.set_xscale("log", base=2)
    ax.set_xticks(worlds, [str(n) for n in worlds])
    ax.set_ylim(0, 105)
    ax.set_xlabel("devices (weak scaling: the per-device batch fixed)")
    ax.set_ylabel("efficiency, % (model)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def report(args, local: int, compute: float, m: dict) -> dict[str, tuple[float, float, float]]:
    """Print what was measured and, with 2+ ranks, the link fitted and the model's step time;
    the fitted link as a row for the prediction table ({} for one rank)."""
    print(f"{args.preset}, global batch {args.batch} over {m['world']} rank(s) ({m['backend']}), {args.steps} steps")
    print(
        f"  gradients per step: D {m['d_bytes'] / 1e6:.2f} MB x {m['n_critic']} phase(s), G {m['g_bytes'] / 1e6:.2f} MB"
    )
    print(f"  one process, batch {local}: T_c = {compute * 1e3:.2f} ms per step")
    print(
        f"  {m['world']} rank(s): T_N = {m['step_s'] * 1e3:.2f} ms per step, of which all-reduce "
        f"{m['allreduce_in_step_s'] * 1e3:.2f} ms ({m['allreduce_in_step_s'] / m['step_s']:.0%})"
    )
    raw = ", ".join(f"{n / 1e6:.3g} MB {t * 1e3:.3f} ms" for n, t in sorted(m["raw"].items()))
    print(f"  raw all-reduce: {raw}")
    if m["world"] == 1:  # one rank has no link to fit: its figures are the code path's own cost
        return {}
    beta, alpha = fit_link(m["raw"], m["world"])
    predicted = step_model(compute, m["world"], m, beta, alpha)
    print(f"  fitted link: bandwidth {beta / 1e9:.2f} GB/s, latency {alpha * 1e6:.0f} us per hop")
    error = predicted / m["step_s"] - 1
    print(f"  model: T_N = {predicted * 1e3:.2f} ms predicted vs {m['step_s'] * 1e3:.2f} ms measured ({error:+.0%})")
    print(f"  weak-scaling efficiency measured here: {compute / m['step_s']:.0%} (model {compute / predicted:.0%})")
    return {"measured link, this machine's T_c": (beta, alpha, compute)}


if __name__ == "__main__":
    main()
