"""`hetgan quantize`: post-training int8, calibrated on G's own inputs, with its quality measured.

Which path runs which layers in int8 was read from the runtimes' kernels and confirmed by
measurement (benchmarks/deploy_runtimes.py, README "int8"):
- OpenVINO IR (`--out FILE.xml`), static int8 with NNCF: weights per output channel, activations
  per tensor, calibrated on z draws. OpenVINO's CPU plugin runs Linear, Conv and ConvTranspose in
  int8 (brgconv/brgemm *_I8 kernels). The path for conv generators on a CPU.
- ONNX (`--out FILE.onnx`) for ONNX Runtime: dynamic int8 (weights int8 per channel, activations
  quantised on the fly) for generators with Linear layers only (mlp, maxout); static QDQ int8 for
  conv generators, which ONNX Runtime's CPU provider runs as dequantise -> fp32 ConvTranspose ->
  quantise (slower than fp32: that file is for execution providers with int8 transposed
  convolutions, such as TensorRT).

The quantised file records its calibration (how many z draws, their seed) and its measured quality
against the fp32 generator on the same z: FID and the class histogram in the data's feature space
for images, the mode metrics for 2-D points, and the max abs difference of the samples.
"""

from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hetgan.artifact import TorchGenerator, torch_generator_from
from hetgan.deploy import openvino_core, require
from hetgan.deploy.export import Check, compare, metadata, onnx_with_check, quiet_libraries, write_openvino
from hetgan.deploy.runtimes import ONNX_PREFIX, OnnxRuntimeGenerator, OpenVINOGenerator
from hetgan.errors import ExportError, HetganError, QualityError
from hetgan.fileio import atomic_write_bytes, output_path
from hetgan.generator import SeededGenerator

log = logging.getLogger("hetgan")
CALIBRATION_SEED = 987_654_321  # calibration z: not a seed that samples and scores use
CALIBRATION_BATCH = 16
CONV_OPS = {"Conv", "ConvTranspose"}


MAX_QUALITY_LOSS = 10.0  # percent: int8's FID at most 10 % above fp32's (2-D: high quality 10 points lower)


@dataclass
class QuantizeResult:
    paths: list[Path]
    method: str
    calibration: dict
    quality: dict
    check: Check

    def summary(self) -> str:
        files = ", ".join(f"{p} ({p.stat().st_size / 2**20:.2f} MiB)" for p in self.paths)
        lines = [f"WARNING: the fp32 model itself: {w}" for w in self.quality.get("fp32_warnings", [])]
        lines += [f"quantized ({self.method}): {files}", self.calibration_line()]
        lines.append(f"  {self.check.summary()}")
        q = self.quality
        if "fid_fp32" in q:
            lines.append(
                f"  FID ({q['n']} samples, {q['feature_space'].split(';')[0]}): fp32 {q['fid_fp32']:.3f}, "
                f"int8 {q['fid_int8']:.3f} ({q['fid_delta_pct']:+.2f} %); class histogram distance, int8 to fp32: "
                f"{q['class_tv']:.4f}"
            )
        elif "modes_fp32" in q:
            lines.append(
                f"  modes ({q['n']} samples): fp32 {q['modes_fp32']}, int8 {q['modes_int8']}; high quality "
                f"fp32 {q['hq_fp32']:.4f}, int8 {q['hq_int8']:.4f}"
            )
        else:
            lines.append("  quality: not measured (--quality-n 0), so not checked against a bound")
        if "loss_pct" in q:
            verdict = "within" if q["loss_pct"] <= q["max_loss_pct"] else "OVER (written with --force)"
            lines.append(f"  quality loss {q['loss_pct']:.2f} %: {verdict} the bound of {q['max_loss_pct']:g} %")
        return "\n".join(lines)

    def calibration_line(self) -> str:
        c = self.calibration
        if not c["n"]:
            return f"  calibration: {c['law']}"
        return f"  calibration: {c['n']} z draws (seed {c['seed']}, batches of {c['batch']})"


def calibration_batches(z_dim: int, n: int, seed: int = CALIBRATION_SEED, n_classes: int = 0) -> list:
    """n z draws [n, z_dim] as sampling draws them (standard normal), in batches; for a
    conditional model each batch is {"z": z, "y": the classes in turn}, its two inputs by name."""
    if n < 1:
        raise HetganError(f"--calibration-n must be at least 1, got {n}")
    z = np.random.default_rng(seed).standard_normal((n, z_dim)).astype(np.float32)
    batches = [z[i : i + CALIBRATION_BATCH] for i in range(0, n, CALIBRATION_BATCH)]
    if not n_classes:
        return batches
    y = np.arange(n, dtype=np.int64) % n_classes
    return [{"z": b, "y": y[i * CALIBRATION_BATCH : i * CALIBRATION_BATCH + len(b)]} for i, b in enumerate(batches)]


def quantize(
    source: str | Path | TorchGenerator,
    out: str | Path,
    calibration_n: int = 512,
    quality_n: int = 2000,
    seed: int = 0,
    evalnet: str | Path | None = None,
    overwrite: bool = False,
    max_quality_loss: float = MAX_QUALITY_LOSS,
    force: bool = False,
) -> QuantizeResult:
    """int8 of a trained generator written to `out` (`hetgan quantize`).

    Args:
        source: a run directory, a generator.safetensors, or a `TorchGenerator`.
        out: FILE.xml (OpenVINO + NNCF static int8) or FILE.onnx (ONNX Runtime: dynamic int8 for
            Linear-only generators, static QDQ otherwise).
        calibration_n: z draws G runs on to calibrate the activation ranges.
        quality_n: int8 is scored against fp32 on this many samples (0 skips it).
        seed: the seed of the scored samples.
        evalnet: the feature space of the score (default: the run's, or the bundled digits').
        overwrite: replace `out` (and its .bin) if it exists (refused otherwise).
        max_quality_loss: the most quality int8 may lose, in percent: FID's increase over fp32's
            for images; for 2-D data, the high-quality share's drop in points, and no mode lost.
        force: write the int8 model even past `max_quality_loss`.

    Returns:
        `QuantizeResult`: the files, the method, the calibration and the measured quality delta.

    Raises:
        QualityError: int8 lost more than `max_quality_loss` (nothing is written unless `force`).
        ExportError: a suffix other than .xml/.onnx; HetganError: the deploy extra is missing.

    Example:
        >>> print(hetgan.quantize("runs/00000-dcgan_mnist", "g-int8.xml").summary())
    """
    out = output_path(out, "--out", "generator-int8.xml", overwrite)
    if out.suffix.lower() not in (".xml", ".onnx"):
        raise ExportError(f"--out {out}: int8 goes to FILE.xml (OpenVINO, NNCF) or FILE.onnx (ONNX Runtime)")
    G = torch_generator_from(source)
    batches = calibration_batches(G.z_dim, calibration_n, n_classes=G.n_classes)
    calibration = {"n": calibration_n, "seed": CALIBRATION_SEED, "batch": CALIBRATION_BATCH, "law": "N(0, 1)"}
    fp32, _ = onnx_with_check(G, "openvino-int8" if out.suffix.lower() == ".xml" else "onnxruntime")
    if out.suffix.lower() == ".xml":
        model, method = openvino_int8(fp32, batches)
        candidate: SeededGenerator = OpenVINOGenerator(model, "the int8 model")
    else:
        data, method = onnx_int8(fp32, batches)
        candidate = OnnxRuntimeGenerator(data, "the int8 model")
    if is_dynamic(method):
        calibration = {"n": 0, "seed": None, "batch": None, "law": "none: activation ranges are taken at run time"}
    check = compare(G, candidate, tolerance=None)
    quality = gate(measure_quality(G, candidate, quality_n, seed, evalnet), max_quality_loss, force)
    info = metadata(G, "int8", quantization={"method": method, "calibration": calibration}, quality=quality)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".xml":
        write_openvino(model, out, G, info, tolerance=None)
        paths = [out, out.with_suffix(".bin")]
    else:
        atomic_write_bytes(out, with_onnx_metadata(data, info))
        paths = [out]
    return QuantizeResult(paths, method, calibration, quality, check)


def quality_loss(quality: dict) -> float | None:
    """How much quality int8 lost, in percent (see `quantize`); None where it was not measured.
    A lost mode of a 2-D mixture counts as a total loss."""
    if "fid_fp32" in quality:
        return quality["fid_delta_pct"]
    if "modes_fp32" in quality:
        if quality["modes_int8"] < quality["modes_fp32"]:
            return 100.0
        return 100 * (quality["hq_fp32"] - quality["hq_int8"])
    return None


def gate(quality: dict, bound: float, force: bool) -> dict:
    """`quality` with the loss and its bound recorded; a QualityError past the bound unless `force`."""
    loss = quality_loss(quality)
    if loss is None:
        return quality
    quality = {**quality, "loss_pct": loss, "max_loss_pct": bound}
    if loss > bound and not force:
        what = (
            f"FID {quality['fid_fp32']:.3f} -> {quality['fid_int8']:.3f}"
            if "fid_fp32" in quality
            else f"modes {quality['modes_fp32']} -> {quality['modes_int8']}, high quality "
            f"{quality['hq_fp32']:.4f} -> {quality['hq_int8']:.4f}"
        )
        raise QualityError(
            f"int8 loses {loss:.2f} % of the quality ({what} on {quality['n']} samples), over the bound of "
            f"{bound:g} %: nothing was written. Pass --force to write it anyway, raise --max-quality-loss, or "
            "calibrate on more z draws (--calibration-n)"
        )
    return quality


def openvino_int8(onnx_fp32: bytes, batches: list[np.ndarray]):
    """NNCF's post-training static int8 of the OpenVINO model: per-channel weights, per-tensor
    activations, statistics from the calibration batches."""
    model = openvino_core("OpenVINO int8").read_model(onnx_fp32)
    with nncf_without_telemetry() as nncf, quiet_libraries():
        quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    return quantized, "OpenVINO static int8 (NNCF: weights per channel, activations per tensor)"


@contextmanager
def nncf_without_telemetry():
    """NNCF, with its usage telemetry (sent to Google Analytics unless it runs in CI, in a
    developer's environment or after its opt-out script) replaced by its own stub while hetgan
    calls it: a model quantised on a user's server must not phone home. NNCF decides when it is
    first imported (the NNCF_CI variable), so that variable is set for the import only, not left
    to every child process; where the user imported NNCF before, its telemetry objects are
    swapped for the stub and put back afterwards."""
    before = os.environ.get("NNCF_CI")
    os.environ["NNCF_CI"] = "1"
    try:
        nncf = require("nncf", "OpenVINO int8")
        from nncf.telemetry import decorator, wrapper
    finally:
        if before is None:
            del os.environ["NNCF_CI"]
        else:
            os.environ["NNCF_CI"] = before
    saved = wrapper.telemetry, decorator.telemetry, nncf.telemetry.telemetry
    stub = wrapper.NNCFTelemetryStub()
    wrapper.telemetry = decorator.telemetry = nncf.telemetry.telemetry = stub
    try:
        yield nncf
    finally:
        wrapper.telemetry, decorator.telemetry, nncf.telemetry.telemetry = saved


def onnx_int8(onnx_fp32: bytes, batches: list[np.ndarray]) -> tuple[bytes, str]:
    """ONNX Runtime's quantisation: dynamic for Linear-only graphs, static QDQ when G convolves.
    The graph first goes through ONNX Runtime's pre-processing (shape inference, its graph
    optimiser), as its quantisation tool asks."""
    onnx = require("onnx", "ONNX int8")
    q = require("onnxruntime.quantization", "ONNX int8")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load_from_string(onnx_fp32)
    convolves = any(node.op_type in CONV_OPS for node in model.graph.node)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, dst = (Path(tmp) / f"{name}.onnx" for name in ("fp32", "pre", "int8"))
        src.write_bytes(onnx_fp32)
        with quiet_libraries():
            quant_pre_process(str(src), str(pre))
        if not convolves:
            with quiet_libraries():
                q.quantize_dynamic(pre, dst, per_channel=True, weight_type=q.QuantType.QInt8)
            method = "ONNX Runtime dynamic int8 (weights per channel; activations quantised at run time)"
        else:
            log.warning(
                "ONNX Runtime's CPU provider runs int8 transposed convolutions as dequantise -> fp32 -> quantise, "
                "slower than fp32 (docs: Deployment, int8); for int8 speed on a CPU quantize to FILE.xml (OpenVINO)"
            )
            reader = _Reader(model.graph.input[0].name, batches)
            with quiet_libraries():
                q.quantize_static(
                    pre, dst, reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                    activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                )  # fmt: skip
            method = "ONNX Runtime static int8 QDQ (weights per channel, activations per tensor)"
        return dst.read_bytes(), method


def is_dynamic(method: str) -> bool:
    return "dynamic" in method


class _Reader:
    """onnxruntime.quantization's CalibrationDataReader protocol over the calibration batches."""

    def __init__(self, name: str, batches: list) -> None:
        self.items = iter([b if isinstance(b, dict) else {name: b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def with_onnx_metadata(data: bytes, info: dict[str, str]) -> bytes:
    onnx = require("onnx", "ONNX int8")
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for key, value in info.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = ONNX_PREFIX + key, value
    return model.SerializeToString()


def measure_quality(reference: SeededGenerator, candidate: SeededGenerator, n: int, seed: int, evalnet=None) -> dict:
    """The candidate's quality against the reference's, on the same z (n samples of `seed`)."""
    if n == 0:
        return {"measured": False}
    from hetgan.eval.score import Evaluator

    try:
        evaluator = Evaluator(reference.config, evalnet, seed, metrics=("fid", "classes"))
    except HetganError as e:
        raise HetganError(f"{e}; or pass --quality-n 0 to quantize without measuring the quality") from None
    a, b = evaluator(reference, n), evaluator(candidate, n)
    # int8 can match a collapsed fp32 model perfectly: its own warnings are said beside the delta.
    warnings = a.get("warnings", [])
    if "fid" not in a:  # 2-D points: the mode metrics
        return {
            "n": n, "seed": seed, "feature_space": a["feature_space"], "fp32_warnings": warnings,
            "modes_fp32": a["modes_captured"], "modes_int8": b["modes_captured"],
            "hq_fp32": a["high_quality"], "hq_int8": b["high_quality"],
        }  # fmt: skip
    pa, pb = (np.asarray(r["class_counts"], dtype=float) / n for r in (a, b))
    return {
        "n": n,
        "seed": seed,
        "feature_space": a["feature_space"],
        "fid_fp32": a["fid"],
        "fid_int8": b["fid"],
        "fid_delta_pct": 100 * (b["fid"] - a["fid"]) / a["fid"],
        "class_counts_fp32": a["class_counts"],
        "class_counts_int8": b["class_counts"],
        "class_tv": float(0.5 * np.abs(pa - pb).sum()),  # total variation: 0 the same histogram, 1 disjoint
        "fp32_warnings": warnings,
    }
