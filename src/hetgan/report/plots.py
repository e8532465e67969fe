"""PNG plots of a run from its metrics.jsonl: losses, D outputs, and eval metrics over kimg."""

from __future__ import annotations

import io
import json
from pathlib import Path

from hetgan.fileio import atomic_write_bytes


def read_metrics(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """(training records, eval records); lines cut short by a crash are skipped."""
    train, evals = [], []
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return train, evals
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        (evals if record.get("eval") else train).append(record)
    return train, evals


def _plot(series: dict[str, tuple[list, list]], title: str, ylabel: str, log_y: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100, layout="constrained")
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label, linewidth=1.2, marker="o" if len(x) < 30 else None, markersize=3)
    ax.set_xlabel("kimg")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _series(records: list[dict], keys: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    out = {}
    for key in keys:
        points = [(r["kimg"], r[key]) for r in records if r.get(key) is not None]  # null: not finite
        if points:
            out[key] = ([p[0] for p in points], [p[1] for p in points])
    return out


def make_plots(run_dir: Path) -> list[Path]:
    """Write plots/losses.png, plots/d_outputs.png and (with eval records) plots/eval.png."""
    train, evals = read_metrics(run_dir)
    folder = run_dir / "plots"
    folder.mkdir(exist_ok=True)
    written = []
    specs = [
        ("losses.png", train, ("loss_d", "loss_g"), "Losses", "loss"),
        ("d_outputs.png", train, ("d_real", "d_fake"), "D outputs (mean logits)", "D(x), D(G(z))"),
        ("d_accuracy.png", train, ("d_acc",), "D accuracy (real > 0 > fake)", "share right"),
        ("ada.png", train, ("ada_p", "ada_rt"), "ADA: augmentation probability p and r_t", "p, r_t"),
        ("eval.png", evals, ("fid",), "FID over training", "FID"),
        ("coverage.png", evals, ("coverage", "precision", "recall", "high_quality"), "Coverage and quality", "share"),
        ("modes.png", evals, ("modes_captured",), "Modes captured", "modes"),
    ]
    for name, records, keys, title, ylabel in specs:
        series = _series(records, keys)
        if series:
            atomic_write_bytes(folder / name, _plot(series, title, ylabel))
            written.append(folder / name)
    return written
