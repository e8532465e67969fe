"""A latency-driven search for the smallest generator that keeps its quality.

Candidates are students at several prune ratios. A student's time per call does not depend on its
weights, so every ratio is pruned and timed first, with the teacher, in rounds taken in turn (the
machine's speed drifts between them); a teacher already within the target stops the search, and
only the ratios within it are distilled and scored. Written to OUT/:
  candidates/prune-R/   each distilled candidate's student directory (resumable, see prune_and_distil())
  search.json, search.md   every candidate: ratio, MACs, time per call, score; and the ratios too slow to distil
  pareto.png            score against time per call, every candidate, the front, the teacher
  generator.safetensors the chosen student (a copy of its artifact)
The choice: the fastest candidate whose score is within `max_increase` of the teacher's and
whose time per call is within the target. A target no candidate meets is an error that names
the closest one, after everything above is written.
"""

from __future__ import annotations

import copy
import io
import logging
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from hetgan.artifact import ARTIFACT_NAME, load_torch_generator, save_generator
from hetgan.compression.prune import check_ratio, macs, prune_generator, widths_of
from hetgan.compression.student import prune_and_distil
from hetgan.config import DistillConfig
from hetgan.deploy.load import load_generator
from hetgan.errors import ConfigError, HetganError
from hetgan.fileio import atomic_write_bytes, strict_json

log = logging.getLogger("hetgan")

DEFAULT_RATIOS = (0.5, 0.625, 0.75, 0.875)
TIMING_ROUNDS = 3  # the teacher and every pruned ratio, timed in turn this many times; medians compared


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


class RuntimeTimer:
    """Milliseconds per call of `batch` samples on `backend`, median over `seconds`; each artifact is
    exported there and loaded once, then timed as often as asked."""

    def __init__(self, backend: str, batch: int, seconds: float, workdir: Path) -> None:
        self.backend, self.batch, self.seconds, self.workdir = backend, batch, seconds, workdir
        self.loaded: dict[Path, object] = {}

    def __call__(self, artifact: Path) -> float:
        from hetgan.benchmarking.inference import latencies

        if artifact not in self.loaded:
            self.loaded[artifact] = self.load(artifact)
        return 1000 * statistics.median(latencies(self.loaded[artifact], self.seconds, False, self.batch))

    def load(self, artifact: Path):
        path = artifact
        if self.backend != "torch":
            from hetgan.deploy.export import export

            suffix = ".onnx" if self.backend == "onnxruntime" else ".xml"
            # A folder of its own: candidates' artifacts share a name (candidates/*/student/generator.safetensors).
            path = Path(tempfile.mkdtemp(dir=self.workdir)) / f"{artifact.parent.name}{suffix}"
            export(load_torch_generator(artifact), "onnx" if self.backend == "onnxruntime" else "openvino", path)
        return load_generator(path, backend=self.backend)


def measure_ms(artifact: Path, backend: str, batch: int, seconds: float, workdir: Path) -> float:
    """Median milliseconds per call of `batch` samples on `backend` (exported there first)."""
    return RuntimeTimer(backend, batch, seconds, workdir)(artifact)


def pruned_artifacts(run: Path, ratios: tuple[float, ...], importance: str, workdir: Path) -> dict[float, tuple]:
    """Each ratio's pruned generator, not yet distilled, as an artifact: (path, MACs), timed as the
    student will run. Also the teacher's MACs, under the key 0."""
    teacher = load_torch_generator(run)
    cfg, arch, z_dim = teacher.config, teacher.config.model.arch, teacher.config.model.z_dim
    out: dict[float, tuple] = {0.0: (run / ARTIFACT_NAME, macs(teacher.net, z_dim))}
    for r in ratios:
        pruned = prune_generator(teacher.net, cfg, r, importance)
        student_cfg = copy.deepcopy(cfg)
        student_cfg.model.g_widths = widths_of(pruned, arch)
        path = workdir / f"prune-{r:.3f}" / "pruned" / ARTIFACT_NAME  # named as the stand-ins' timers key them
        path.parent.mkdir(parents=True)
        save_generator(pruned, student_cfg.validate(), path)
        out[r] = (path, macs(pruned, z_dim))
    return out


def within_target(
    pruned: dict[float, tuple], ms: dict[float, float], target_ms: float, on: str, search_anyway: bool
) -> tuple[list[float], list[dict]]:
    """(the ratios whose pruned generator runs within `target_ms`, the others as records), or an
    error before anything is distilled: where the teacher (key 0) already meets the target (unless
    `search_anyway`), or no ratio does."""
    on = f"ms per call of {on} (median of {TIMING_ROUNDS} rounds)"
    if ms[0.0] <= target_ms and not search_anyway:
        raise HetganError(
            f"the teacher already runs in {ms[0.0]:.3g} {on}, within --target-ms {target_ms:g}: no student "
            "is needed. Use the teacher as it is, give a smaller --target-ms, or pass --search-anyway to "
            "distil and compare students all the same"
        )
    ratios = [r for r in pruned if r != 0.0]
    fits = [r for r in ratios if ms[r] <= target_ms]
    too_slow = [
        {"name": f"prune-{r:.3f}", "ratio": r, "macs": pruned[r][1], "ms": ms[r]} for r in ratios if r not in fits
    ]
    if not fits:
        fastest = min(too_slow, key=lambda c: c["ms"])
        raise HetganError(
            f"no prune ratio runs within --target-ms {target_ms:g}, even before distillation: the fastest, "
            f"{fastest['name']}, takes {fastest['ms']:.3g} {on}. Add larger --ratios or raise the target; "
            "nothing was distilled"
        )
    return fits, too_slow


def timed_in_rounds(measure: Callable[[Path], float], artifacts: dict, rounds: int = TIMING_ROUNDS) -> dict:
    """The median of `rounds` timings of each artifact, taken in turn (`interleaved`): a slow
    spell of the machine falls on every one of them rather than on one."""
    from hetgan.benchmarking.training import interleaved

    times = interleaved({key: lambda warm, path=path: measure(path) for key, path in artifacts.items()}, rounds)
    return {key: statistics.median(values) for key, values in times.items()}


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
    """Time every ratio pruned, distil those within `target_ms`, score them and choose (see the
    module's docstring). `measure` (artifact -> ms per call) and `score` (artifact ->
    lower-is-better quality) replace the backend timing and FID where given. A teacher already
    within `target_ms` stops the search (a HetganError says so) unless `search_anyway`; so does a
    target no pruned ratio reaches, before anything is distilled."""
    run, out = Path(run), Path(out)
    if target_ms <= 0:
        raise ConfigError(f"--target-ms {target_ms}: the time per call to reach must be > 0")
    if not ratios:
        raise ConfigError("--ratios: give at least one prune ratio")
    for r in ratios:
        check_ratio(r)
    workdir = Path(tempfile.mkdtemp(prefix="hetgan-search-"))
    measure = measure or RuntimeTimer(backend, batch, 1.0, workdir)
    score = score or (lambda a: fid_score(a, n))
    try:
        pruned = pruned_artifacts(run, ratios, importance, workdir)
        ms = timed_in_rounds(measure, {r: path for r, (path, _) in pruned.items()})
        fits, too_slow = within_target(pruned, ms, target_ms, f"{batch} on {backend}", search_anyway)
        teacher = Candidate(
            "teacher", 0.0, pruned[0.0][1], ms[0.0], score(run / ARTIFACT_NAME), str(run / ARTIFACT_NAME)
        )
        candidates = []
        for r in fits:
            s = prune_and_distil(
                run, out / "candidates" / f"prune-{r:.3f}", prune=r, importance=importance, kimg=kimg,
                weights=weights, progress=progress,
            )  # fmt: skip
            candidates.append(Candidate(f"prune-{r:.3f}", r, s.macs, ms[r], score(s.artifact), str(s.artifact)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    chosen, decision = choose(candidates, teacher, max_increase, target_ms)
    write_results(out, teacher, candidates, chosen, decision, backend, batch, target_ms, too_slow)
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
    too_slow: list[dict] = (),
) -> None:
    """search.json, search.md and pareto.png under OUT (and the chosen artifact): every distilled
    candidate, and the ratios not distilled because they were too slow even pruned."""
    front = {c.name for c in pareto_front(candidates)}
    record = {
        "backend": backend,
        "batch": batch,
        "target_ms": target_ms,
        "teacher": asdict(teacher),
        "candidates": [asdict(c) | {"pareto": c.name in front} for c in candidates],
        "too_slow": list(too_slow),  # pruned and timed, not distilled
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
    for c in too_slow:
        lines.append(f"| {c['name']} | {c['ratio']:.3f} | {c['macs'] / 1e6:.2f} | {c['ms']:.3f} | - | too slow |")
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
