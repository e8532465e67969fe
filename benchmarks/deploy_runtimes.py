"""Deployment targets: inference runtimes and int8 against eager PyTorch, on this machine.

    python benchmarks/deploy_runtimes.py [--default-run RUN] [--textbook-run RUN] [--seconds 20]
                                         [--rounds 5] [--n 5000] [--textbook-kimg 30] [--out bench_out/deploy]
                                         [--models default textbook]

For the default preset's generator (dcgan_mnist) and the textbook DCGAN-32 (width 64), both on the
bundled digits: `hetgan bench --deploy` (every backend and precision, timed in interleaved rounds
against eager PyTorch fp32 in the same process), then the issue's targets, each with its verdict:
- best fp32 runtime >= 2x eager PyTorch img/s at batch 64, and >= 3x at batch-1 latency (p50),
  with max abs error <= 1e-4;
- int8 >= 1.5x the best fp32 runtime at batch 64, with FID (digits) at most 3 % above fp32's.
Then what bounds the fp32 rows (G's FLOPs per sample on the graph each backend executes, each
row's achieved GFLOP/s against the fp32 matrix-product rate torch reaches on the spot) and which
kernel ran each layer and for how long (OpenVINO's and ONNX Runtime's own profilers), for fp32
and int8: where the time goes when a target is missed, and which layers ran in int8.

Without --default-run / --textbook-run it trains them first (about 5 and 3 minutes on 2 cores)
under --out. Results go to OUT/deploy-<model>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import hetgan
from hetgan.benchmarking.inference import bench_deploy, format_deploy
from hetgan.benchmarking.training import FlopCount, matmul_peak
from hetgan.deploy.export import SUBPIXEL_FOR
from hetgan.deploy.rewrite import for_inference


def trained(run: str | None, preset: str, kimg: float | None, out: Path) -> Path:
    if run:
        return Path(run)
    target = out / f"run-{preset}"
    if (target / "generator.safetensors").exists():
        return target
    cfg = hetgan.get_preset(preset)
    if kimg:
        cfg.train.kimg = kimg
        cfg.train.snapshot_kimg = cfg.train.grid_kimg = kimg
    cfg.accel.device = "cpu"
    print(f"training {preset} for {cfg.train.kimg} kimg into {target} ...", flush=True)
    return hetgan.train(cfg, out=target, progress=False).finished().run_dir


def verdicts(record: dict) -> list[str]:
    rows = {r["name"]: r for r in record["deploy"]["rows"]}
    fp32 = [r for name, r in rows.items() if name.endswith("fp32") and name != "torch fp32"]
    best64 = max(fp32, key=lambda r: r["img_per_s_64"])
    best1 = max(fp32, key=lambda r: r["latency_speedup_1"])
    int8 = max((r for name, r in rows.items() if name.endswith("int8")), key=lambda r: r["img_per_s_64"])
    ref_fid = rows["torch fp32"]["quality"]
    int8_vs_fp32 = int8["img_per_s_64"] / best64["img_per_s_64"]
    fid_up = 100 * (int8["quality"] - best64["quality"]) / best64["quality"]
    ok = {True: "met", False: "NOT MET"}
    return [
        f"best fp32 at batch 64: {best64['name']} {best64['speedup_64']:.2f}x eager (target 2x): "
        f"{ok[best64['speedup_64'] >= 2]}",
        f"best fp32 at batch-1 latency: {best1['name']} {best1['latency_speedup_1']:.2f}x eager p50 (target 3x): "
        f"{ok[best1['latency_speedup_1'] >= 3]}",
        f"fp32 max abs error: {max(r['max_abs_error'] for r in fp32):.1e} (target 1e-4): "
        f"{ok[max(r['max_abs_error'] for r in fp32) <= 1e-4]}",
        f"int8 at batch 64: {int8['name']} {int8_vs_fp32:.2f}x the best fp32 (target 1.5x): {ok[int8_vs_fp32 >= 1.5]}",
        f"int8 FID {int8['quality']:.2f} vs fp32 {best64['quality']:.2f} (eager {ref_fid:.2f}): {fid_up:+.2f} % "
        f"(target <= +3 %): {ok[fid_up <= 3]}",
    ]


def executed_flops(run: Path) -> dict[str, float]:
    """FLOPs per sample of the graph each backend really executes: eager PyTorch runs G as trained,
    each runtime the copy rewritten for it on export (hetgan.deploy.rewrite: OpenVINO's sub-pixel
    layers do 9/4 the multiply-adds of the deconvolutions they replace)."""
    G = hetgan.load_generator(run)
    z = torch.randn(1, G.z_dim)
    nets = {"torch": G.net, **{b: for_inference(G.net, SUBPIXEL_FOR[b]) for b in ("onnxruntime", "openvino")}}
    flops = {}
    for backend, net in nets.items():
        with FlopCount() as counter, torch.no_grad():
            net(z, *([G.labels(1)] if G.n_classes else []))
        flops[backend] = counter.total
    return flops


def compute_bound(run: Path, record: dict) -> list[str]:
    """Each fp32 row's achieved GFLOP/s, counted on the graph it executes, against the fp32
    matrix-product rate torch reaches here now; and what 2x eager would need on the graph of the
    fastest runtime. Stored in the record as `compute_bound`."""
    flops = executed_flops(run)
    peak = matmul_peak(torch.device("cpu"), torch.float32, seconds=2.0)
    rows = {r["name"].split()[0]: r for r in record["deploy"]["rows"] if r["precision"] == "fp32"}
    achieved = {b: flops[b] * r["img_per_s_64"] for b, r in rows.items()}
    best = max((b for b in rows if b != "torch"), key=lambda b: rows[b]["img_per_s_64"])
    need = 2 * rows["torch"]["img_per_s_64"] * flops[best]
    record["compute_bound"] = {
        "mflop_per_sample": {b: round(f / 1e6, 3) for b, f in flops.items()},
        "torch_matmul_gflop_s": round(peak / 1e9, 1),
        "gflop_s_64": {b: round(a / 1e9, 1) for b, a in achieved.items()},
        "two_x_eager_gflop_s": round(need / 1e9, 1),
        "two_x_eager_backend": best,
    }
    lines = [
        "MFLOP per sample as executed: "
        + ", ".join(f"{b} {f / 1e6:.2f}" for b, f in flops.items())
        + f"; torch's fp32 matrix product here {peak / 1e9:.0f} GFLOP/s"
    ]
    for b, a in achieved.items():
        share = f"{100 * a / peak:.0f} % of torch's matmul"
        lines.append(f"  {rows[b]['name']:<18} {a / 1e9:6.0f} GFLOP/s at batch 64 ({share})")
    share = f"{100 * need / peak:.0f} % of torch's matmul"
    lines.append(f"  2x eager on {best}'s graph would need {need / 1e9:.0f} GFLOP/s ({share})")
    if max(achieved.values()) > peak:
        lines.append("  a runtime beats torch's own matrix product: that rate is no ceiling for this CPU's kernels")
    return lines


def kernel_profile(record: dict) -> str:
    """Per layer: the kernel and its milliseconds at batch 64, for each runtime and precision (the
    rows' `kernels`, profiled by bench --deploy on the files it timed)."""
    lines = []
    for row in record["deploy"]["rows"]:
        kernels = [k for k in row.get("kernels", []) if k["ms"] > 0]
        if not kernels:
            continue
        total = sum(k["ms"] for k in kernels)
        lines.append(f"{row['name']}: {total:.3f} ms per batch of 64 in its profiler")
        for k in sorted(kernels, key=lambda k: -k["ms"])[:8]:
            lines.append(
                f"  {k['ms']:7.3f} ms {100 * k['ms'] / total:5.1f} %  {k['op']:<24} {k['kernel']:<28} {k['layer']}"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--default-run", help="a trained dcgan_mnist run (default: train one)")
    parser.add_argument("--textbook-run", help="a trained dcgan_textbook run (default: train one)")
    parser.add_argument("--textbook-kimg", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row and batch, over all rounds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n", type=int, default=5000, help="samples for FID per row")
    parser.add_argument("--out", default="bench_out/deploy")
    parser.add_argument("--models", nargs="+", choices=["default", "textbook"], default=["default", "textbook"])
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {}
    if "default" in args.models:
        models["default (dcgan_mnist)"] = trained(args.default_run, "dcgan_mnist", None, out)
    if "textbook" in args.models:
        textbook = trained(args.textbook_run, "dcgan_textbook", args.textbook_kimg, out)
        models["textbook DCGAN-32 (dcgan_textbook)"] = textbook
    for title, run in models.items():
        record = bench_deploy(run, seconds=args.seconds, rounds=args.rounds, n=args.n)
        slug = title.split(" (")[1].rstrip(")")
        bound = compute_bound(run, record)
        (out / f"deploy-{slug}.json").write_text(json.dumps(record, indent=1))
        print(f"\n== {title}: {run}")
        print(format_deploy(record))
        print("targets:")
        print("\n".join(f"  {line}" for line in verdicts(record)))
        spread = [r["speedup_64_range"] for r in record["deploy"]["rows"]]
        print(f"  (per-round ratio ranges at batch 64: {', '.join(f'{lo:.2f}-{hi:.2f}' for lo, hi in spread)})")
        print("compute bound:")
        print("\n".join(bound))
        print("kernels per layer (top 8 by time):")
        print(kernel_profile(record))
    machine = record["machine"]
    print(f"\nmachine: {machine.get('cpu_model')}, {machine['cpu_count']} cores, torch {machine['torch']}")


if __name__ == "__main__":
    main()
