"""`hetgan report RUN_DIR`: one self-contained HTML page (images inlined as data URIs) with the
sample grids over time, the plots, the metrics, the config and the machine the run used."""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

from hetgan.errors import HetganError
from hetgan.fileio import atomic_write_bytes
from hetgan.report.plots import make_plots, read_metrics

MAX_GRIDS = 12

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.grids { display: flex; flex-wrap: wrap; gap: 12px; }
.grids figure { margin: 0; text-align: center; font-size: 0.85em; }
.grids img { width: 200px; image-rendering: pixelated; border: 1px solid #ccc; }
.plots img { max-width: 520px; margin: 4px; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; border-bottom: 1px solid #eee; text-align: left; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
.alarm { color: #a00; }
"""

# Lets a headless browser (and a person) confirm every inlined image decoded.
CHECK_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-ok', ok + '/' + imgs.length);
});
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def latent_walks(run_dir: Path, pairs=((0, 1), (2, 3), (4, 5)), frames: int = 10) -> str:
    """Figures of G_ema's walks from one seed's sample to another's (`hetgan sample --interpolate`):
    a smooth walk says G maps nearby z to nearby images; jumps or repeats say it does not. Empty
    for 2-D data and for a run with no generator yet."""
    from hetgan.deploy.load import load_generator
    from hetgan.errors import CheckpointError
    from hetgan.sample_files import grid_image, png_bytes

    try:
        G = load_generator(run_dir)
    except CheckpointError:
        return ""
    if len(G.shape) != 3:
        return ""
    figures = []
    for a, b in pairs:
        strip = png_bytes(grid_image(G.interpolate(a, b, frames), ncol=frames))
        uri = "data:image/png;base64," + base64.b64encode(strip).decode()
        label = f"seed {a} to seed {b}"
        figures.append(f'<figure><img src="{uri}" alt="walk {label}"><figcaption>{label}</figcaption></figure>')
    return "<h2>Latent walks (G_ema, spherical interpolation of z)</h2>" + "".join(figures)


def pick_grids(run_dir: Path) -> list[Path]:
    grids = sorted((run_dir / "samples").glob("step-*.png"))
    if len(grids) > MAX_GRIDS:  # evenly spaced, always keeping the first and last
        step = (len(grids) - 1) / (MAX_GRIDS - 1)
        grids = [grids[round(i * step)] for i in range(MAX_GRIDS)]
    final = run_dir / "samples" / "final.png"
    return grids + ([final] if final.exists() else [])


def grid_label(path: Path) -> str:
    m = re.match(r"step-(\d+)", path.stem)
    return f"step {int(m.group(1))}" if m else path.stem


def metrics_table(train: list[dict], evals: list[dict], best: dict | None) -> str:
    rows = []
    if train:
        last = train[-1]
        rows += [(f"last training record: {k}", v) for k, v in last.items()]
    if evals:
        rows += [(f"last eval: {k}", v) for k, v in evals[-1].items() if k != "eval"]
    if best:
        rows += [(f"best: {k}", v) for k, v in best.items()]
    if not rows:
        return "<p>No metrics recorded yet.</p>"
    cells = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{v:.5g}</td></tr>"
        if isinstance(v, float)
        else f"<tr><th>{html.escape(k)}</th><td>{'not finite' if v is None else html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{cells}</table>"


def build_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write a self-contained HTML report of a run (`hetgan report`): its config, losses and
    metrics over training, sample grids, alarms and machine; returns the file written.

    Args:
        run_dir: a run directory (finished, or still training: what it has so far).
        out: the HTML file (default RUN_DIR/report.html).

    Raises:
        HetganError: not a run directory.

    Example:
        >>> hetgan.build_report("runs/00000-dcgan_mnist")
    """
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else None
    if not (run_dir / "config.yaml").is_file():
        raise HetganError(f"{run_dir}: not a hetgan run directory (no config.yaml)")
    plots = make_plots(run_dir)
    train, evals = read_metrics(run_dir)
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").exists() else None
    machine = (run_dir / "machine.json").read_text() if (run_dir / "machine.json").exists() else "{}"
    log_path = run_dir / "log.txt"
    alarms = [line for line in log_path.read_text().splitlines() if "ALARM" in line] if log_path.exists() else []
    grids = "".join(
        f'<figure><img src="{data_uri(p)}" alt="{grid_label(p)}"><figcaption>{grid_label(p)}</figcaption></figure>'
        for p in pick_grids(run_dir)
    )
    plot_imgs = "".join(f'<img src="{data_uri(p)}" alt="{p.stem}">' for p in plots)
    alarm_html = (
        "<h2>Alarms</h2><ul>" + "".join(f'<li class="alarm">{html.escape(a)}</li>' for a in alarms) + "</ul>"
        if alarms
        else ""
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>hetgan report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style></head>
<body data-images-ok="pending">
<h1>hetgan run {html.escape(run_dir.name)}</h1>
<p>{len(train)} training records, {len(evals)} evaluations.</p>
{alarm_html}
<h2>Samples over training (fixed z, G_ema)</h2><div class="grids">{grids}</div>
{latent_walks(run_dir)}
<h2>Plots</h2><div class="plots">{plot_imgs or "<p>No metrics yet.</p>"}</div>
<h2>Metrics</h2>{metrics_table(train, evals, best)}
<h2>Config</h2><pre>{html.escape((run_dir / "config.yaml").read_text())}</pre>
<h2>Machine</h2><pre>{html.escape(machine)}</pre>
<script>{CHECK_SCRIPT}</script>
</body></html>
"""
    out = out or run_dir / "report.html"
    atomic_write_bytes(out, page.encode("utf-8"))
    return out
