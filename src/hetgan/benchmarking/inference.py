"""`hetgan bench --deploy`: what each backend and precision costs in speed, size, memory and
quality, in one table, against eager PyTorch fp32 timed in the same run.

Rows: eager PyTorch fp32 (the reference), ONNX Runtime fp32, OpenVINO fp32, OpenVINO int8 (NNCF)
and ONNX Runtime int8 (dynamic for Linear-only generators, QDQ otherwise), each from the file
`hetgan export` / `hetgan quantize` would write (made in a temporary folder), plus any model files
given. For each row:
- img/s at batch 64 and 256, and batch-1 latency p50/p99, timed in rounds taken in turn with the
  other rows' (as `hetgan bench` does), so that a slow spell of the machine lands on every row;
  the speed ratios over eager PyTorch are medians of per-round ratios; with 2+ threads also img/s
  at batch 64 with two calls in flight ("b64 x2": the model loaded with two streams, eager PyTorch
  with its threads split between two callers), the throughput of a server or a batch job;
- the model's size on disk;
- the peak resident memory of a fresh process that loads the model and generates a batch of 256,
  importing only what that backend needs (numpy and the runtime; torch and hetgan for PyTorch);
- the max abs error against PyTorch fp32 on fixed z (batch 1, 2, 64), and FID (2-D data: modes
  captured) of n samples of the same z in the data's feature space;
- for the ONNX Runtime and OpenVINO rows, which kernel ran each layer and for how long at batch
  64 (`layer_kernels`, in the JSON only).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hetgan.artifact import ARTIFACT_NAME, TorchGenerator
from hetgan.benchmarking.training import interleaved
from hetgan.deploy.export import compare, export
from hetgan.deploy.load import load_generator
from hetgan.deploy.runtimes import cpu_threads, file_backend
from hetgan.errors import HetganError
from hetgan.generator import SeededGenerator

BATCHES = (64, 256)
REFERENCE = "torch fp32"


@dataclass
class Row:
    name: str
    G: SeededGenerator
    files: list[Path]
    G2: SeededGenerator | None = None  # the same model for two calls at once (two streams), where timed
    speeds: dict[int | str, list[float]] = field(default_factory=dict)  # batch (or "64x2") -> img/s per round
    latencies: list[float] = field(default_factory=list)  # batch-1 seconds, every call
    result: dict = field(default_factory=dict)


def model_files(path: Path) -> list[Path]:
    """The files a model is made of: an IR's .xml and .bin, a run's artifact, or the file itself."""
    if path.is_dir():
        return [path / ARTIFACT_NAME] if (path / ARTIFACT_NAME).exists() else []
    return [path, path.with_suffix(".bin")] if path.suffix.lower() == ".xml" else [path]


def make_rows(G: TorchGenerator, source: Path, extra: list[Path], tmp: Path, int8: bool, threads: int) -> list[Row]:
    """The reference and every backend's file of it, exported (and quantised) into `tmp`."""
    from hetgan.deploy.quantize import quantize

    two = threads >= 2
    rows = [Row(REFERENCE, G, model_files(source), G if two else None)]
    made = [("onnxruntime fp32", tmp / "g.onnx"), ("openvino fp32", tmp / "g.xml")]
    for _, path in made:
        export(G, "onnx" if path.suffix == ".onnx" else "openvino", path)
    if int8:
        made += [("openvino int8", tmp / "g8.xml"), ("onnxruntime int8", tmp / "g8.onnx")]
        for _, path in made[2:]:
            quantize(G, path, quality_n=0)
    made += [(f"{path.name} ({file_backend(path)})", path) for path in extra]
    for name, path in made:
        G2 = load_generator(path, threads=threads, streams=2) if two else None
        rows.append(Row(name, load_generator(path, threads=threads), model_files(path), G2))
    return rows


def img_per_s(G: SeededGenerator, batch: int, seconds: float, warm: bool, callers: int = 1) -> float:
    """G's img/s at `batch`, calling it in a loop for `seconds`. `callers` > 1: that many threads
    call it at once, each with its own batch (a runtime loaded with as many streams; eager torch
    with its threads split between them for the while): throughput with that many calls in flight."""
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(batch))
    for _ in range(0 if warm else 3):  # first calls allocate, and OpenVINO compiles for the shape
        G.generate(z)
    threads = torch.get_num_threads()
    calls = [0] * callers
    start = time.perf_counter()

    def loop(i: int) -> None:
        if callers > 1:
            torch.set_num_threads(max(1, threads // callers))  # torch's pool is per calling thread too
        while True:
            G.generate(z)
            calls[i] += 1
            if time.perf_counter() - start >= seconds:
                break

    if callers == 1:
        loop(0)
    else:
        workers = [threading.Thread(target=loop, args=(i,)) for i in range(callers)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        torch.set_num_threads(threads)
    return sum(calls) * batch / (time.perf_counter() - start)


def latencies(G: SeededGenerator, seconds: float, warm: bool, batch: int = 1) -> list[float]:
    """Seconds per call of `batch` samples (1: latency), over `seconds` and at least 20 calls."""
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(1))
    for _ in range(0 if warm else 10):
        G.generate(z)
    out, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(out) < 20:
        t = time.perf_counter()
        G.generate(z)
        out.append(time.perf_counter() - t)
    return out


def time_rows(rows: list[Row], seconds: float, rounds: int) -> None:
    """Each row's img/s per batch and batch-1 latencies, in rounds taken in turn."""
    window = seconds / rounds
    timers = {}
    for i, row in enumerate(rows):
        for batch in BATCHES:
            timers[(i, batch)] = lambda warm, row=row, batch=batch: img_per_s(row.G, batch, window, warm)
        if row.G2 is not None:
            timers[(i, "64x2")] = lambda warm, row=row: img_per_s(row.G2, 64, window, warm, callers=2)

        def latency_timer(warm: bool, row=row) -> float:
            row.latencies += latencies(row.G, window, warm)
            return 0.0

        timers[(i, 1)] = latency_timer
    speeds = interleaved(timers, rounds)
    for (i, batch), values in speeds.items():
        if batch != 1:
            rows[i].speeds[batch] = values


PROBE = """
import sys, numpy as np
backend, path, batch, z_dim, threads, classes = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])
z = np.random.default_rng(0).standard_normal((batch, z_dim)).astype(np.float32)
y = np.arange(batch, dtype=np.int64) % classes if classes else None  # a conditional model's classes in turn
if backend == "torch":
    import torch, hetgan
    torch.set_num_threads(threads)
    hetgan.load_generator(path).generate(torch.from_numpy(z), None if y is None else torch.from_numpy(y))
elif backend in ("onnxruntime", "tensorrt"):
    import onnxruntime as ort
    o = ort.SessionOptions(); o.intra_op_num_threads = threads; o.inter_op_num_threads = 1
    s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
    names = [i.name for i in s.get_inputs()]
    s.run(None, {names[0]: z} if y is None else {names[0]: z, names[1]: y})
else:
    import openvino as ov
    c = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})
    c({0: z} if y is None else {0: z, 1: y})
# VmHWM, not getrusage's ru_maxrss: Linux carries that over from the parent across exec
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))  # KiB
"""


def peak_memory_mib(row: Row, threads: int, batch: int = 256) -> float | None:
    """Peak RSS of a fresh process that loads the row's model and generates one batch."""
    if not row.files:
        return None
    backend = getattr(row.G, "backend", "torch")
    path = row.files[0]
    classes = getattr(row.G, "n_classes", 0) or 0
    args = [sys.executable, "-c", PROBE, backend, str(path), str(batch), str(row.G.z_dim), str(threads), str(classes)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        return None
    return int(done.stdout.split()[-1]) / 1024


def score_rows(rows: list[Row], n: int, seed: int, evalnet) -> str:
    """Max abs error against the reference and the quality of each row's n samples of `seed`."""
    from hetgan.eval.score import Evaluator

    reference = rows[0].G
    evaluator = Evaluator(reference.config, evalnet, seed, metrics=("fid",))
    for row in rows:
        row.result["max_abs_error"] = compare(reference, row.G, tolerance=None).max_abs_error
        scores = evaluator(row.G, n)
        row.result["quality"] = scores.get("fid", scores.get("modes_captured"))
    return "FID" if len(reference.shape) == 3 else "modes"


def summarise(rows: list[Row]) -> None:
    ref = rows[0]
    ref_p50 = statistics.median(ref.latencies)
    for row in rows:
        r = row.result
        for batch in BATCHES:
            r[f"img_per_s_{batch}"] = statistics.median(row.speeds[batch])
        ratios = [v / w for v, w in zip(row.speeds[64], ref.speeds[64], strict=True)]
        r["speedup_64"] = statistics.median(ratios)
        r["speedup_64_range"] = [min(ratios), max(ratios)]
        two = row.speeds.get("64x2")
        r["img_per_s_64_x2"] = statistics.median(two) if two else None
        r["latency_p50_ms"] = 1000 * statistics.median(row.latencies)
        r["latency_p99_ms"] = 1000 * float(np.percentile(row.latencies, 99))
        r["latency_speedup_1"] = ref_p50 / statistics.median(row.latencies)
        r["size_mib"] = sum(p.stat().st_size for p in row.files if p.exists()) / 2**20 if row.files else None


def bench_deploy(
    source: str | Path,
    extra: list[str | Path] = (),
    seconds: float = 10.0,
    rounds: int = 3,
    n: int = 2000,
    seed: int = 0,
    evalnet=None,
    int8: bool = True,
    threads: int | None = None,
) -> dict:
    """Measure a trained generator's inference on every backend and precision (`hetgan bench --deploy`).

    Args:
        source: the run or its generator.safetensors: the eager PyTorch reference row.
        extra: exported .onnx/.xml files to add as rows (the run is also exported to ONNX and
            OpenVINO in a temporary folder, and quantised to int8 unless `int8` is False).
        seconds: timed seconds per row.
        rounds: timing windows, taken in turn across the rows.
        n: each row's quality is scored on n samples against the eager one's.
        seed: the seed of the scored samples.
        evalnet: the feature network of the score (default: the run's, or the digits').
        threads: CPU threads of every backend (default: all this process may use).

    Returns:
        The record `--json` writes: provenance, and per row img/s at batch 1 and 64, speed-ups
        against eager PyTorch, quality, peak memory and the runtimes' kernels; `format_deploy`
        prints it.

    Example:
        >>> print(format_deploy(hetgan.bench_deploy("runs/00000-dcgan_mnist", seconds=3)))
    """
    from hetgan.training.rundir import provenance

    source = Path(source)
    if file_backend(source) != "torch":
        raise HetganError(
            f"{source}: bench --deploy needs the run or its generator.safetensors first, for the eager PyTorch "
            "reference; exported files can follow it"
        )
    threads = threads or cpu_threads()
    callers_threads = torch.get_num_threads()  # put back after: a caller's process keeps its setting
    try:
        torch.set_num_threads(threads)
        G = load_generator(source)
        with tempfile.TemporaryDirectory(prefix="hetgan-deploy-") as tmp:
            rows = make_rows(G, source, [Path(p) for p in extra], Path(tmp), int8, threads)
            quality = score_rows(rows, n, seed, evalnet)
            time_rows(rows, seconds, rounds)
            summarise(rows)
            for row in rows:
                row.result["peak_rss_mib"] = peak_memory_mib(row, threads)
                if row.G.backend in ("onnxruntime", "openvino"):  # eager PyTorch has its own profiler script
                    row.result["kernels"] = layer_kernels(row.G)
    finally:
        torch.set_num_threads(callers_threads)
    record = provenance(G.config, torch.device("cpu"))
    record["deploy"] = {
        "noise": noise(rows),
        "source": str(source),
        "threads": threads,
        "n": n,
        "seed": seed,
        "quality_metric": quality,
        "rounds": rounds,
        "seconds": seconds,
        "rows": [{"name": row.name, "precision": row.G.precision, **row.result} for row in rows],
    }
    return record


NOISY_SPREAD = 1.3  # the reference's fastest round over its slowest beyond this: figures unreliable


def noise(rows: list[Row]) -> dict:
    """How steady the machine was while the rows were timed: the spread of the reference's own
    img/s at batch 64 over the rounds (max over min; a steady machine gives about 1), the load
    average per core at the end, and a warning where the figures cannot be trusted. A busy core
    (another process, a noisy neighbour's steal time) slows some rounds and not others; ratios
    taken within a round survive that better than absolute figures, but not a spread this wide."""
    ref = rows[0].speeds[64]
    spread = max(ref) / min(ref) if len(ref) > 1 else None
    load = os.getloadavg()[0] / (os.cpu_count() or 1) if hasattr(os, "getloadavg") else None
    warning = None
    if spread is not None and spread > NOISY_SPREAD:
        warning = (
            f"eager PyTorch's own img/s varied {spread:.1f}x between rounds (steady: under {NOISY_SPREAD}x): "
            "something else used the CPU while timing, so treat these figures as unreliable; rerun on an idle "
            "machine, or with more --rounds"
        )
    return {"reference_spread": spread, "load_per_core": load, "warning": warning}


def format_deploy(record: dict) -> str:
    d = record["deploy"]
    q = d["quality_metric"]
    head = (
        f"{'backend':<26} {'img/s b64':>10} {'b256':>8} {'b64 x2':>8} {'x eager b64':>16} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'x eager b1':>10} {'MiB':>6} {'peak MiB':>8} {'max err':>8} {q:>7}"
    )
    lines = [f"deploy bench of {d['source']}: {d['threads']} threads, {d['rounds']} rounds; batch 1 for latency", head]
    for row in d["rows"]:
        lo, hi = row["speedup_64_range"]
        size = f"{row['size_mib']:.2f}" if row["size_mib"] is not None else "-"
        peak = f"{row['peak_rss_mib']:.0f}" if row["peak_rss_mib"] is not None else "-"
        two = f"{row['img_per_s_64_x2']:.0f}" if row.get("img_per_s_64_x2") is not None else "-"
        quality = f"{row['quality']:.2f}" if q == "FID" else str(row["quality"])
        lines.append(
            f"{row['name']:<26} {row['img_per_s_64']:>10.0f} {row['img_per_s_256']:>8.0f} {two:>8} "
            f"{row['speedup_64']:>6.2f}x ({lo:.2f}-{hi:.2f}) "
            f"{row['latency_p50_ms']:>7.3f} {row['latency_p99_ms']:>7.3f} "
            f"{row['latency_speedup_1']:>9.2f}x {size:>6} {peak:>8} {row['max_abs_error']:>8.1e} {quality:>7}"
        )
    lines.append(f"{q} on {d['n']} samples of seed {d['seed']} (the same z for every row); max err: against torch fp32")
    lines.append("b64 x2: img/s at batch 64 with two calls in flight (two streams; torch's threads split in two)")
    lines.append("x eager b64: img/s over eager PyTorch's, median (min-max) of the rounds; x eager b1: batch-1 p50")
    if d["noise"]["warning"]:
        lines.append(f"WARNING: {d['noise']['warning']}")
    return "\n".join(lines)


def layer_kernels(G: SeededGenerator, batch: int = 64) -> list[dict]:
    """Which kernel ran each layer of an ONNX Runtime or OpenVINO generator, and for how long,
    from the runtime's own profiler over a few calls at `batch`: what says whether a layer
    really ran in int8 (OpenVINO's exec types end in I8/i8; ONNX Runtime runs a QDQ layer it
    cannot fuse as DequantizeLinear -> the fp32 op -> QuantizeLinear)."""
    z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(0)).numpy()
    if G.backend == "openvino":
        compiled = G.core.compile_model(G.model, "CPU", {**G.compile_config, "PERF_COUNT": True})
        request = compiled.create_infer_request()
        feeds = {0: z} if not G.n_classes else {0: z, 1: G.labels(batch).numpy()}  # a conditional model's classes
        for _ in range(5):
            request.infer(feeds)
        return [
            {"layer": p.node_name, "op": p.node_type, "kernel": p.exec_type, "ms": p.real_time.total_seconds() * 1e3}
            for p in request.profiling_info
            if p.exec_type not in ("undef", "unknown_f32")
        ]
    return ort_layer_kernels(G, z)


def ort_layer_kernels(G, z: np.ndarray) -> list[dict]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = G.session.get_session_options().intra_op_num_threads
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "ort")
        session = ort.InferenceSession(G.source, options, providers=["CPUExecutionProvider"])
        feeds = {G.input_names[0]: z}
        if G.n_classes:  # a conditional model's second input: the classes in turn
            feeds[G.input_names[1]] = G.labels(len(z)).numpy()
        for _ in range(5):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[tuple[str, str], list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"].removesuffix("_kernel_time"), e["args"]["op_name"])
            totals.setdefault(key, []).append(e["dur"] / 1e3)
    return [{"layer": layer, "op": op, "kernel": op, "ms": statistics.mean(ms)} for (layer, op), ms in totals.items()]
