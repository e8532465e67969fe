"""A latency-driven search for the smallest generator that keeps its quality.

Candidates are students at several prune ratios (each pruned, distilled, then measured on the
chosen backend and scored); the teacher is measured alike. Written to OUT/:
  candidates/prune-R/   each candidate's student directory (resumable, see prune_and_distil())
  search.json, search.md   every candidate: ratio, widths, MACs, time per call, score
  pareto.png            score against time per call, every candidate, the front, the teacher
  generator.safetensors the chosen student (a copy of its artifact)
The choice: the fastest candidate whose score is within `max_increase` of the teacher's and
whose time per call is within the target. A target no candidate meets is an error that names
the closest one, after everything above is written.
"""

from __future__ import annotations

import io
import logging
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hetgan.artifact import ARTIFACT_NAME, load_torch_generator
from hetgan.compression.prune import check_ratio
from hetgan.compression.student import prune_and_distil
from hetgan.config import DistillConfig
from hetgan.deploy.load import load_generator
from hetgan.errors import ConfigError, HetganError
from hetgan.fileio import atomic_write_bytes, strict_json

log = logging.getLogger("hetgan")

DEFAULT_RATIOS = (0.5, 0.625, 0.75, 0.875)


@dataclass
class Candidate:
    name: str
    ratio: float  # 0 for the teacher
    macs: int
    ms: float  # seconds per call at the search's batch, in milliseconds
    score: float  # FID (or for 2-D data 1 - high-quality share): lower is better
    artifact: str


def pareto_front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other is both faster and better than, fastest first."""
    front = []
    for c in sorted(candidates, key=lambda c: (c.ms, c.score)):
        if not front or c.score < front[-1].score:
            front.append(c)
    return front


def choose(
    candidates: list[Candidate], teacher: Candidate, max_increase: float, target_ms: float
) -> tuple[Candidate | None, str]:
    """(the fastest candidate whose score is at most (1 + max_increase) x the teacher's and whose
    time per call is at most target_ms, or None; what was decided, in words)."""
    bound = teacher.score * (1 + max_increase)
    good = [c for c in candidates if c.score <= bound]
    fast = [c for c in good if c.ms <= target_ms]
    if fast:
        best = min(fast, key=lambda c: c.ms)
        return best, f"chose {best.name}: {best.ms:.3g} ms per call, score {best.score:.4g} (bound {bound:.4g})"
    if good:
        closest = min(good, key=lambda c: c.ms)
        why = f"the fastest within the quality bound, {closest.name}, takes {closest.ms:.3g} ms"
    else:
        closest = min(candidates, key=lambda c: c.score)
        why = f"no candidate scores within the bound {bound:.4g}; the best, {closest.name}, scores {closest.score:.4g}"
    return None, (
        f"no candidate meets {target_ms:g} ms per call with a score within {max_increase:.0%} of the teacher's: "
        f"{why}. Raise the target, allow more (--max-increase), distil longer (--kimg), or add ratios"
    )


def measure_ms(artifact: Path, backend: str, batch: int, seconds: float, workdir: Path) -> float:
    """Median milliseconds per call of `batch` samples on `backend` (exported there first)."""
    path = artifact
    if backend != "torch":
        from hetgan.deploy.export import export

        suffix = ".onnx" if backend == "onnxruntime" else ".xml"
        # A folder of its own: candidates' artifacts share a name (candidates/*/student/generator.safetensors).
        path = Path(tempfile.mkdtemp(dir=workdir)) / f"{artifact.parent.name}{suffix}"
        export(load_torch_generator(artifact), "onnx" if backend == "onnxruntime" else "openvino", path)
    from hetgan.benchmarking.inference import latencies

    return 1000 * statistics.median(latencies(load_generator(path, backend=backend), seconds, False, batch))


def fid_score(artifact: Path, n: int, seed: int = 0) -> float:
    """FID in the data's feature space (2-D data: 1 - the share of high-quality samples)."""
    from hetgan.eval.score import evaluate

    G = load_torch_generator(artifact)
    record = evaluate(G, n=n, seed=seed)
    return record["fid"] if "fid" in record else 1 - record["high_quality"]


def search(
    run: str | Path,
    out: str | Path,
    target_ms: float,
    backend: str = "onnxruntime",
    batch: int = 1,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    kimg: float = 20.0,
    max_increase: float = 0.10,
    n: int = 5000,
    weights: DistillConfig | None = None,
    progress: bool = True,
    importance: str = "magnitude",
    measure: Callable[[Path], float] | None = None,
    score: Callable[[Path], float] | None = None,
    search_anyway: bool = False,
) -> Candidate:
    """Distil a student at each of `ratios`, measure it and choose (see the module's docstring).
    `measure` (artifact -> ms per call) and `score` (artifact -> lower-is-better quality) replace
    the backend timing and FID where given. The teacher is timed first: if it already runs within
    `target_ms`, nothing is distilled (a HetganError says so) unless `search_anyway`."""
    run, out = Path(run), Path(out)
    if target_ms <= 0:
        raise ConfigError(f"--target-ms {target_ms}: the time per call to reach must be > 0")
    if not ratios:
        raise ConfigError("--ratios: give at least one prune ratio")
    for r in ratios:
        check_ratio(r)
    workdir = Path(tempfile.mkdtemp(prefix="hetgan-search-"))
    measure = measure or (lambda a: measure_ms(a, backend, batch, 3.0, workdir))
    score = score or (lambda a: fid_score(a, n))
    try:
        teacher_artifact = run / ARTIFACT_NAME
        teacher_ms = measure(teacher_artifact)
        if teacher_ms <= target_ms and not search_anyway:
            raise HetganError(
                f"the teacher already runs in {teacher_ms:.3g} ms per call of {batch} on {backend}, within "
                f"--target-ms {target_ms:g}: no student is needed. Use the teacher as it is, give a smaller "
                "--target-ms, or pass --search-anyway to distil and compare students all the same"
            )
        students = [
            prune_and_distil(
                run,
                out / "candidates" / f"prune-{r:.3f}",
                prune=r,
                importance=importance,
                kimg=kimg,
                weights=weights,
                progress=progress,
            )
            for r in ratios
        ]
        teacher = Candidate(
            "teacher",
            0.0,
            students[0].teacher_macs,
            teacher_ms,
            score(teacher_artifact),
            str(teacher_artifact),
        )
        candidates = [
            Candidate(f"prune-{s.ratio:.3f}", s.ratio, s.macs, measure(s.artifact), score(s.artifact), str(s.artifact))
            for s in students
        ]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    chosen, decision = choose(candidates, teacher, max_increase, target_ms)
    write_results(out, teacher, candidates, chosen, decision, backend, batch, target_ms)
    if chosen is None:
        raise HetganError(decision + f" (every candidate: {out / 'search.md'})")
    log.info("%s", decision)
    return chosen


def write_results(
    out: Path,
    teacher: Candidate,
    candidates: list[Candidate],
    chosen,
    decision: str,
    backend: str,
    batch: int,
    target_ms: float,
) -> None:
    front = {c.name for c in pareto_front(candidates)}
    record = {
        "backend": backend,
        "batch": batch,
        "target_ms": target_ms,
        "teacher": asdict(teacher),
        "candidates": [asdict(c) | {"pareto": c.name in front} for c in candidates],
        "chosen": chosen.name if chosen else None,
        "decision": decision,
    }
    atomic_write_bytes(out / "search.json", strict_json(record, indent=1).encode())
    lines = [
        f"# Compression search: {backend}, batch {batch}, target {target_ms:g} ms per call",
        "",
        "| candidate | prune ratio | MACs (M) | ms per call | score | Pareto |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in [teacher, *candidates]:
        mark = "chosen" if chosen is not None and c.name == chosen.name else ("yes" if c.name in front else "")
        lines.append(f"| {c.name} | {c.ratio:.3f} | {c.macs / 1e6:.2f} | {c.ms:.3f} | {c.score:.4g} | {mark} |")
    lines += ["", decision, ""]
    atomic_write_bytes(out / "search.md", "\n".join(lines).encode())
    atomic_write_bytes(out / "pareto.png", plot(teacher, candidates, front, target_ms))
    if chosen is not None:
        atomic_write_bytes(out / ARTIFACT_NAME, Path(chosen.artifact).read_bytes())


def plot(teacher: Candidate, candidates: list[Candidate], front: set[str], target_ms: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.scatter([c.ms for c in candidates], [c.score for c in candidates], label="students", color="tab:blue")
    for c in candidates:
        ax.annotate(
            c.name.removeprefix("prune-"), (c.ms, c.score), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    line = sorted((c for c in candidates if c.name in front), key=lambda c: c.ms)
    ax.plot([c.ms for c in line], [c.score for c in line], color="tab:blue", alpha=0.5, label="Pareto front")
    ax.scatter([teacher.ms], [teacher.score], marker="*", s=160, color="tab:red", label="teacher")
    ax.axvline(target_ms, color="grey", linestyle="--", label="target")
    ax.set_xlabel("ms per call")
    ax.set_ylabel("score (FID; lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
