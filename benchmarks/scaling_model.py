"""Data-parallel efficiency: what a step costs, which messages it sends over which link, and a
model that predicts the efficiency on N devices from those messages and the links' figures.

    python benchmarks/scaling_model.py [--preset dcgan_textbook] [--batch 32] [--steps 40]
                                       [--layouts 1x1 2x1 1x2] [--device cpu|cuda]
                                       [--gpu-step-ms MS] [--json FILE] [--plot scaling.png]

What one training step sends (hetgan.training: trainer.py, loop.py, distributed.py):
- in each of the n_critic D phases and in the G phase, the network's gradients: one flat
  all-reduce (NCCL on GPUs, gloo on CPUs): the *data link*;
- in each phase, a 4-byte skip flag (a non-finite loss on any rank skips the phase on all). With
  accel.optimizer_impl=fused it stays on the device (data link); otherwise the host reads it,
  waiting for the device, and all-reduces it over gloo, that is TCP: the *host link*;
- every train.log_interval steps, the loop's stop flag (a signal to any rank stops them all): 4
  bytes, and the logged losses averaged over the ranks, both over the host link.
On CPUs both links are gloo over TCP. The worker counts the all-reduces a window of
log_interval steps really makes, and the script checks them against this list.

Layouts `RxN`: R ranks on each of N nodes; here every node is a torchrun agent on this machine,
the nodes meeting at a c10d rendezvous on 127.0.0.1. Weak scaling: `--batch` per rank, fixed.

The model: T_N = T_c + the sum over the step's messages of the ring cost on the message's link,
2 (N-1) alpha + 2 (N-1)/N bytes / beta, with T_c one process's step at the per-rank batch (one
thread, as each rank has). Each measured layout fits its link from raw all-reduces (4 bytes give
the latency alpha per hop, the largest message the bandwidth beta); the model's step time is then
checked against the measured one. For GPUs it predicts 1-16 devices from nominal NCCL figures
for the data link and the host link measured here for the flags (the hosts of a GPU machine talk
TCP as well), with --gpu-step-ms as T_c; a flag read on the host also stalls the GPU until the
host has the answer, which the model counts as the flag's latency alone (a lower bound).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hetgan.benchmarking.training import PhaseTimer, synchronize, trainer_devices
from hetgan.fileio import write_json
from hetgan.presets import get_preset
from hetgan.training import distributed
from hetgan.training.loop import StopSignal
from hetgan.training.trainer import Trainer

# Nominal all-reduce figures of GPU machines' data links (not measured here): bus bandwidth as
# nccl-tests reports it for large messages, and a per-hop latency.
LINKS = {
    "NVLink 4 (8x H100 SXM, one node)": (360e9, 10e-6),
    "PCIe 4 x16, no NVLink": (20e9, 15e-6),
    "InfiniBand 400 Gb/s (across nodes)": (40e9, 20e-6),
    "Ethernet 25 Gb/s (across nodes)": (2.5e9, 50e-6),
}
WORLDS = (1, 2, 4, 8, 16)


def config(args: argparse.Namespace, batch: int):
    cfg = get_preset(args.preset)
    cfg.train.batch_size = batch
    cfg.accel.device = args.device
    return cfg


def loop_steps(trainer: Trainer, stop: StopSignal, steps: int) -> int:
    """`steps` training steps as hetgan.training.loop takes them, every log_interval-th followed
    by the ranks' stop agreement and the logged losses averaged over the ranks. The number of
    those losses."""
    logged = 0
    for _ in range(steps):
        result = trainer.step()
        stop.agreed(trainer.dist, trainer.step_count, trainer.cfg.train.log_interval)
        if trainer.step_count % trainer.cfg.train.log_interval == 0:
            logged = len(trainer.dist.mean_floats(result.floats()))
    return logged


def timed_steps(trainer: Trainer, steps: int, warmup: int = 5) -> float:
    """Seconds per step over `steps` loop steps (a fixed count: every rank must take the same)."""
    stop = StopSignal()  # not entered: no signal handlers, only the agreement
    loop_steps(trainer, stop, warmup)
    devices = trainer_devices(trainer)
    synchronize(devices)
    start = time.perf_counter()
    loop_steps(trainer, stop, steps)
    trainer.count_skipped()
    synchronize(devices)
    return (time.perf_counter() - start) / steps


@contextlib.contextmanager
def counted_allreduces():
    """The byte size of every all-reduce made inside, in order (hetgan.training.distributed calls
    torch.distributed.all_reduce through the module, so it sees this wrapper)."""
    calls: list[int] = []
    real = dist.all_reduce

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.numel() * tensor.element_size())
        return real(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        yield calls
    finally:
        dist.all_reduce = real


def gradient_bytes(trainer: Trainer) -> tuple[int, int]:
    """Bytes all-reduced in a D phase and in a G phase."""
    size = lambda net: sum(p.numel() * p.element_size() for p in net.parameters())  # noqa: E731
    return size(trainer.D), size(trainer.G)


def allreduce_seconds(nbytes: int, device: torch.device, repeats: int = 30, group=None) -> float:
    """Median seconds of one all-reduce of `nbytes` (float32) between the ranks (in `group`)."""
    t = torch.zeros(max(nbytes // 4, 1), device=device)
    times = []
    for _ in range(repeats + 3):
        synchronize([device])
        start = time.perf_counter()
        dist.all_reduce(t, group=group)
        synchronize([device])
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[repeats // 2]


def worker(args: argparse.Namespace) -> None:
    """One rank: the step time, the step's gradient all-reduce time, the all-reduces a window of
    log_interval steps makes, and the raw all-reduce figures."""
    if args.device == "cpu":  # torchrun sets one thread a rank only for 2+ ranks a node: every layout alike
        torch.set_num_threads(1)
    group = distributed.setup(torch.device(args.device if args.device != "auto" else "cpu"))
    try:
        trainer = Trainer(config(args, args.batch * max(group.world, 1)), dist=group)
        step = timed_steps(trainer, args.steps)
        trainer.timer = PhaseTimer(trainer_devices(trainer))  # the gradient all-reduce phases, timed apart
        timed_steps(trainer, args.steps, warmup=0)
        totals = trainer.timer.totals
        in_allreduce = (totals.get("d_allreduce", 0.0) + totals.get("g_allreduce", 0.0)) / args.steps
        trainer.timer = None
        window = trainer.cfg.train.log_interval
        loop_steps(trainer, StopSignal(), -trainer.step_count % window)  # to a window's start
        with counted_allreduces() as calls:
            logged = loop_steps(trainer, StopSignal(), window)
        d_bytes, g_bytes = gradient_bytes(trainer)
        device = group.comm_device or torch.device("cpu")
        sizes = (4, g_bytes, d_bytes, 4 * max(g_bytes, d_bytes))
        raw = {n: allreduce_seconds(n, device) for n in sizes} if group.active else {}
        host = {}  # under NCCL the host flags have a gloo group of their own
        if group.host_group is not None:
            host = {4: allreduce_seconds(4, torch.device("cpu"), group=group.host_group)}
        if group.is_main:
            record = {
                "world": group.world,
                "backend": group.backend,
                "step_s": step,
                "allreduce_in_step_s": in_allreduce,
                "n_critic": trainer.loss.n_critic,
                "fused": trainer.skip_on_device,
                "d_bytes": d_bytes,
                "g_bytes": g_bytes,
                "log_interval": window,
                "log_bytes": 8 * logged,  # float64 each
                "calls": calls,
                "raw": raw,
                "raw_host": host,
            }
            Path(args.worker).write_text(json.dumps(record))
        trainer.close()
    finally:
        group.close()


def step_messages(m: dict) -> list[tuple[str, int, float, str]]:
    """The all-reduces of one training step as the code makes them (see the module's docstring):
    (what, bytes, times per step, link: "data" or "host")."""
    flags = "data" if m["fused"] else "host"
    return [
        ("D gradients", m["d_bytes"], m["n_critic"], "data"),
        ("G gradients", m["g_bytes"], 1, "data"),
        ("phase skip flags", 4, m["n_critic"] + 1, flags),
        ("stop flag", 4, 1 / m["log_interval"], "host"),
        ("logged losses", m["log_bytes"], 1 / m["log_interval"], "host"),
    ]


def window_calls(m: dict) -> list[int]:
    """The byte sizes the model expects over a window of log_interval steps, sorted."""
    per_window = [(nbytes, round(times * m["log_interval"])) for _, nbytes, times, _ in step_messages(m)]
    return sorted(n for nbytes, count in per_window for n in [nbytes] * count)


def fit_link(raw: dict[int, float], world: int) -> tuple[float, float]:
    """(bandwidth B/s, latency s per hop) of a ring all-reduce that fits the micro-benchmark: the
    4-byte message gives the latency, the largest the bandwidth."""
    hops = 2 * (world - 1)
    alpha = raw[min(raw)] / hops
    largest = max(raw)
    beta = hops / world * largest / max(raw[largest] - hops * alpha, 1e-9)
    return beta, alpha


def allreduce_model(nbytes: int, world: int, beta: float, alpha: float) -> float:
    if world == 1:
        return 0.0
    return 2 * (world - 1) * alpha + 2 * (world - 1) / world * nbytes / beta


def step_model(compute_s: float, world: int, m: dict, links: dict[str, tuple[float, float]]) -> float:
    """Predicted seconds per step on `world` devices: compute plus each of the step's messages
    on its link (`links`: {"data": (beta, alpha), "host": (beta, alpha)})."""
    return compute_s + sum(
        times * allreduce_model(nbytes, world, *links[link]) for _, nbytes, times, link in step_messages(m)
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_group(cmd: list[str] | list[list[str]], timeout: float) -> None:
    """Run torchrun (several agents at once: a list of commands) each in a process group of its
    own; past `timeout`, kill the whole groups: killing torchrun alone (what subprocess.run's
    timeout does) would leave its ranks running."""
    cmds = cmd if cmd and isinstance(cmd[0], list) else [cmd]
    procs = [
        subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True) for c in cmds
    ]
    deadline = time.monotonic() + timeout
    try:
        errors = [p.communicate(timeout=max(deadline - time.monotonic(), 0.01))[1] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        raise SystemExit(f"torchrun did not finish within {timeout:g} s; it and its ranks were killed") from None
    for p, c, err in zip(procs, cmds, errors, strict=True):
        if p.returncode:
            raise subprocess.CalledProcessError(p.returncode, c, stderr=err)


def measure_layout(args: argparse.Namespace, layout: str) -> dict:
    """One layout `RxN` (R ranks on each of N nodes on this machine) under torchrun: the worker's
    record."""
    per_node, nodes = (int(x) for x in layout.split("x"))
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"scaling-{os.getpid()}-{layout}.json"
    base = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={per_node}"]
    if nodes == 1:
        base += ["--standalone"]
    else:
        base += [f"--nnodes={nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{free_port()}"]
        base += [f"--rdzv-id=scaling-{os.getpid()}"]
    script = [__file__, "--worker", str(out), "--preset", args.preset, "--batch", str(args.batch)]
    script += ["--steps", str(args.steps), "--device", args.device]
    run_group([base + script for _ in range(nodes)], timeout=1800)
    m = json.loads(out.read_text())
    out.unlink()
    m["raw"] = {int(k): v for k, v in m["raw"].items()}
    m["raw_host"] = {int(k): v for k, v in m["raw_host"].items()}
    return m | {"layout": layout}


def links_of(m: dict) -> dict[str, tuple[float, float]]:
    """The data and host links of a measured layout of 2+ ranks, (bandwidth, latency per hop):
    under gloo one link carries both; under NCCL the host's gloo group is timed apart (4 bytes:
    its latency; its messages are too small for its bandwidth to matter)."""
    data = fit_link(m["raw"], m["world"])
    if not m["raw_host"]:
        return {"data": data, "host": data}
    return {"data": data, "host": (data[0], m["raw_host"][4] / (2 * (m["world"] - 1)))}


def checked(m: dict, compute: float) -> dict:
    """A measured layout against the model: its link fitted, the model's step time and error,
    and whether the all-reduces counted in the run are the model's messages."""
    row = {
        "layout": m["layout"],
        "world": m["world"],
        "measured_step_ms": round(m["step_s"] * 1e3, 3),
        "allreduce_in_step_ms": round(m["allreduce_in_step_s"] * 1e3, 3),
        "calls_per_window": sorted(m["calls"]),
        "model_calls_per_window": window_calls(m) if m["backend"] else [],  # torchrun's 1 rank has a group
        "efficiency_measured": round(compute / m["step_s"], 4),
    }
    links = {"data": (float("inf"), 0.0), "host": (float("inf"), 0.0)}
    if m["world"] > 1:  # one rank has no link to fit: its figures are the code path's own cost
        links = links_of(m)
        (beta, alpha), host = links["data"], links["host"][1]
        row |= {"link_gb_s": round(beta / 1e9, 3), "link_latency_us": round(alpha * 1e6, 1)}
        row |= {"host_latency_us": round(host * 1e6, 1)}
    predicted = step_model(compute, m["world"], m, links)
    return row | {
        "model_step_ms": round(predicted * 1e3, 3),
        "model_error": round(predicted / m["step_s"] - 1, 4),
        "efficiency_model": round(compute / predicted, 4),
    }


def gpu_predictions(m: dict, host: tuple[float, float], gpu_step_s: float) -> dict[str, list[float]]:
    """Efficiency on WORLDS GPUs per nominal data link, with the phase flags on the host (the
    default optimiser) and on the device (fused Adam); the host link is `host`, measured here."""
    table = {}
    for name, data in LINKS.items():
        for fused, how in ((False, "flags via host"), (True, "fused Adam, flags on GPU")):
            mm = m | {"fused": fused}
            links = {"data": data, "host": host}
            table[f"{name}, {how}"] = [gpu_step_s / step_model(gpu_step_s, n, mm, links) for n in WORLDS]
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dcgan_textbook")
    parser.add_argument("--batch", type=int, default=32, help="the batch of each rank (weak scaling)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layouts", nargs="+", default=["1x1", "2x1", "1x2"], help="RxN: R ranks on each of N nodes")
    parser.add_argument(
        "--gpu-step-ms",
        type=float,
        default=1000 * 64 / 9566,
        help="a GPU's step time at the per-device batch, for the GPU predictions (default: the "
        "H100's eager fp32 DCGAN-32 step at batch 64, benchmarks/RESULTS.md)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also plot the predicted efficiencies")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a rank writing its figures to this file
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    for layout in args.layouts:
        if not (len(layout.split("x")) == 2 and all(x.isdigit() and int(x) > 0 for x in layout.split("x"))):
            parser.error(f"--layouts {layout}: expected RxN, R ranks on each of N nodes (1x1, 2x1, 1x2)")

    if args.device == "cpu":
        torch.set_num_threads(1)  # as each torchrun rank has (torchrun sets OMP_NUM_THREADS=1)
    # T_c is timed again right before each layout, so that each pair shares the machine's state
    # (its speed drifts over minutes): the model and the efficiency of a layout use its own T_c.
    single = Trainer(config(args, args.batch))
    measured, rows = [], []
    for layout in args.layouts:
        compute = timed_steps(single, args.steps)
        measured.append(measure_layout(args, layout))
        rows.append(checked(measured[-1], compute) | {"compute_ms": round(compute * 1e3, 3)})
    single.close()
    print(f"{args.preset}, batch {args.batch} per rank, {args.steps} steps; T_c: one process, timed before each layout")
    for m in measured:
        if m["world"] > 1:
            print(f"  a step sends ({m['backend']}):")
            for what, nbytes, times, link in step_messages(m):
                print(f"    {what:<18} {nbytes / 1e6:9.4f} MB x {times:g} per step over the {link} link")
            break
    header = f"{'layout':<8}{'ranks':>6}{'T_c ms':>9}{'measured ms':>13}{'model ms':>10}{'error':>8}"
    print(f"{header}{'eff. measured':>15}{'model':>8}  link")
    for r in rows:
        link = f"{r['link_gb_s']:.2f} GB/s, {r['link_latency_us']:.0f} us/hop" if "link_gb_s" in r else "-"
        print(
            f"{r['layout']:<8}{r['world']:>6}{r['compute_ms']:>9.2f}{r['measured_step_ms']:>13.2f}"
            f"{r['model_step_ms']:>10.2f}{r['model_error']:>+8.0%}{r['efficiency_measured']:>15.0%}"
            f"{r['efficiency_model']:>8.0%}  {link}"
        )
        if r["calls_per_window"] != r["model_calls_per_window"]:
            calls, expected = r["calls_per_window"], r["model_calls_per_window"]
            print(f"    the run's all-reduces differ from the model's: {calls} vs {expected}")
    worst = max((abs(r["model_error"]) for r in rows), default=0.0)
    print(f"worst model error: {worst:.0%} (target within 20 %)")

    result = {"preset": args.preset, "batch": args.batch, "layouts": rows}
    multi = [m for m in measured if m["world"] > 1]
    if multi:
        host = links_of(multi[0])["host"]  # gloo over TCP, as the flags go on GPU machines
        gpu = args.gpu_step_ms / 1e3
        table = gpu_predictions(multi[0], host, gpu)
        print(f"\npredicted efficiency on GPUs (T_c = {gpu * 1e3:.2f} ms; host link as measured here: "
              f"{host[1] * 1e6:.0f} us/hop)")  # fmt: skip
        print(f"{'data link, where the flags go':<62}" + "".join(f"{n:>6}" for n in WORLDS))
        for name, values in table.items():
            print(f"{name:<62}" + "".join(f"{e:>6.0%}" for e in values))
        result["gpu_predictions"] = {"worlds": list(WORLDS), "gpu_step_ms": args.gpu_step_ms} | {
            k: [round(e, 4) for e in v] for k, v in table.items()
        }
        if args.plot:
            point = (multi[0]["world"], rows[measured.index(multi[0])]["efficiency_measured"])
            args.plot.write_bytes(plot(WORLDS, table, point, f"{args.preset}, batch {args.batch} per device"))
            print(f"plot: {args.plot}")
    write_json(args.json, result)


def plot(worlds: tuple[int, ...], efficiency: dict[str, list[float]], measured: tuple[int, float], title: str) -> bytes:
    """The predicted weak-scaling efficiency against the number of devices, a line per link, and
    the efficiency measured here as a point, as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8), dpi=100)
    for name, values in efficiency.items():
        style = "-" if "fused" in name else "--"
        ax.plot(worlds, [100 * e for e in values], style, marker="o", markersize=3, label=name)
    ax.scatter(
        [measured[0]], [100 * measured[1]], marker="*", s=140, color="black", zorder=3, label="measured here (CPU)"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(worlds, [str(n) for n in worlds])
    ax.set_ylim(0, 105)
    ax.set_xlabel("devices (weak scaling: the per-device batch fixed)")
    ax.set_ylabel("efficiency, % (model)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
