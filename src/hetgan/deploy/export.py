"""`hetgan export`: a trained generator as one self-describing model file, checked before it is
written.

- ONNX through torch's dynamo exporter: one file (weights inside, no side `.data`), a dynamic
  batch axis (traced at batch 2), z [B, z_dim] in, samples [B, *shape] out.
- OpenVINO IR (`.xml` + `.bin`) from the same ONNX graph, fp32 weights unless asked for fp16.

The generator's config, z_dim, output shape and range, the hetgan version and the training run's
id go into the file's metadata (ONNX metadata_props `hetgan.*`; the IR's rt_info `hetgan`), so the
file alone says what it is and `hetgan.load_generator` rebuilds its description from it.

Every export is run in its runtime on fixed z at batch 1, 2 and 64 and compared with eager
PyTorch in fp32 before anything is written; beyond the tolerance it is an error, not a silent
file. BatchNorm folding in exporters and runtimes has had bugs reported upstream, so an ONNX graph
that fails the check is exported again without the exporter's graph optimisation (torch's
`optimize=False`) before giving up.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import shutil
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hetgan.artifact import TorchGenerator, torch_generator_from
from hetgan.config import to_dict
from hetgan.deploy import openvino_core, require
from hetgan.deploy.rewrite import for_inference, subpixel_choice
from hetgan.deploy.runtimes import FORMAT, ONNX_PREFIX, OnnxRuntimeGenerator, OpenVINOGenerator, file_sha256
from hetgan.errors import ExportError
from hetgan.fileio import atomic_write_bytes, fsync_dir, hash_weights, output_path
from hetgan.generator import SeededGenerator
from hetgan.version import __version__

log = logging.getLogger("hetgan")
FORMATS = ("onnx", "openvino")
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}
TOLERANCE = 1e-4  # max abs error against eager PyTorch fp32, for fp32 models
FP16_WEIGHTS_TOLERANCE = 1e-2  # weights rounded to 11 significant bits
VERIFY_BATCHES = (1, 2, 64)
VERIFY_SEED = 1234
# The widest upsampling layer (output channels) each target gets as a sub-pixel convolution
# (hetgan.deploy.rewrite): none for ONNX Runtime; up to 16 channels for OpenVINO fp32 and below 32
# for its int8, where the transposed convolutions' kernels are slow (benchmarks/RESULTS.md, "Compression").
SUBPIXEL_FOR = {"onnxruntime": 0, "openvino": 16, "openvino-int8": 31}
TRACE_BATCH = 2  # a batch of 1 would let the exporter specialise the batch axis to a constant
MAX_ONNX_BYTES = 2**31 - 1  # protobuf's limit for one self-contained file


@dataclass
class Check:
    """How far a runtime's samples are from eager PyTorch's on the same z, per batch size."""

    errors: dict[int, float] = field(default_factory=dict)
    tolerance: float | None = TOLERANCE  # None: measured, not bounded (int8)

    @property
    def max_abs_error(self) -> float:
        return max(self.errors.values())

    def summary(self) -> str:
        per_batch = ", ".join(f"{e:.2e} (batch {b})" for b, e in self.errors.items())
        bound = f"; tolerance {self.tolerance:.0e}" if self.tolerance is not None else ""
        return f"max abs error against PyTorch fp32: {per_batch}{bound}"


def compare(
    reference: SeededGenerator, candidate: SeededGenerator, tolerance: float | None, batches=VERIFY_BATCHES
) -> Check:
    """Run both on the same fixed z at each batch size; the max abs difference of their outputs."""
    check = Check(tolerance=tolerance)
    gen = torch.Generator().manual_seed(VERIFY_SEED)
    for batch in batches:
        z = torch.randn(batch, reference.z_dim, generator=gen)
        y = reference.labels(batch)  # a conditional model's classes in turn; None for others
        want, got = reference.generate(z, y).numpy(), candidate.generate(z, y).numpy()
        if got.shape != want.shape:
            raise ExportError(f"the exported model gives shape {got.shape} at batch {batch}, PyTorch {want.shape}")
        err = float(np.abs(got - want).max())
        check.errors[batch] = err if math.isfinite(err) else math.inf
    return check


def metadata(G: SeededGenerator, precision: str = "fp32", **extra) -> dict[str, str]:
    """What a model file says about itself, as strings (ONNX metadata and OpenVINO rt_info both
    hold strings)."""
    images = len(G.shape) == 3
    info = {
        "format": FORMAT,
        "hetgan_version": __version__,
        "config": json.dumps(to_dict(G.config)),
        "z_dim": str(G.z_dim),
        "input": json.dumps({"name": "z", "shape": ["batch", G.z_dim], "dtype": "float32", "law": "N(0, 1)"}),
        **({"labels": json.dumps(labels_input(G))} if G.n_classes else {}),
        "output": json.dumps(
            {"name": "sample", "shape": ["batch", *G.shape], "range": [-1, 1] if images else "unbounded 2-D points"}
        ),
        "run_id": G.run_id or "",
        "precision": precision,
    }
    return info | {key: value if isinstance(value, str) else json.dumps(value) for key, value in extra.items()}


@contextlib.contextmanager
def quiet_libraries():
    """torch's exporter prints its progress and warns about torchvision ops and its own
    deprecations, onnxscript and ONNX Runtime's quantiser log each pass, NNCF draws progress bars:
    a user exporting a generator needs none of it (errors still raise)."""
    names = ("torch.onnx", "torch.onnx._internal.exporter._registration", "onnxscript", "onnx_ir", "nncf")
    names += ("onnxruntime.quantization", "onnxruntime.quantization.shape_inference")
    loggers = [logging.getLogger(name) for name in names] + [logging.getLogger()]  # ORT's quantiser logs to root
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def labels_input(G: SeededGenerator) -> dict:
    """The second input of a conditional model, as its metadata describes it."""
    return {"name": "y", "shape": ["batch"], "dtype": "int64", "classes": G.class_names}


def trace_onnx(G: TorchGenerator, optimize: bool, target: str = "onnxruntime"):
    """G's network as an onnx.ModelProto with a dynamic batch axis and hetgan's metadata, its
    layers rewritten for the `target` runtime (hetgan.deploy.rewrite). A conditional G's model
    takes y [B] int64 as its second input."""
    require("onnxscript", "ONNX export")  # torch's dynamo exporter is built on it
    require("onnx", "ONNX export")
    net = for_inference(G.net, SUBPIXEL_FOR[target])
    z = torch.randn(TRACE_BATCH, G.z_dim, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1)
    inputs, names, shapes = (z,), ["z"], ({0: batch},)
    if G.n_classes:
        inputs, names, shapes = (z, G.labels(TRACE_BATCH)), ["z", "y"], ({0: batch}, {0: batch})
    try:
        with quiet_libraries(), torch.no_grad():
            program = torch.onnx.export(
                net.eval(),
                inputs,
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=names,
                output_names=["sample"],
                optimize=optimize,
                verbose=False,
            )
    except Exception as e:
        raise ExportError(f"torch's ONNX exporter failed on this {G.config.model.arch} generator: {e}") from e
    proto = program.model_proto
    for key, value in metadata(G).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = ONNX_PREFIX + key, value
    return proto


# The newest verified exports of this process (onnx_with_check), by what they are made from: a
# generator exported and then quantised, or a run put on a runtime twice (bench --deploy, a serving
# process, a test session), is traced once. Each trace takes seconds; each entry is the model's size.
VERIFIED_KEEP = 4
VERIFIED_MAX_BYTES = 64 * 2**20  # a larger model is traced again rather than held twice in memory
_verified: OrderedDict[str, tuple[bytes, Check]] = OrderedDict()


def export_key(G: TorchGenerator, target: str, tolerance: float) -> str:
    """A digest of everything an export of G depends on: every weight and buffer of its network
    (names, dtypes, shapes, bytes), what the file says about itself, the layers rewritten for the
    target (SUBPIXEL_FOR, which benchmarks/subpixel_widths.py varies) and the tolerance. Targets
    that rewrite the same layers (every target, for a network hetgan does not rewrite) share it:
    their graphs are the same."""
    what = [subpixel_choice(G.net, SUBPIXEL_FOR[target]), tolerance, sorted(metadata(G).items())]
    digest = hashlib.sha256(json.dumps(what).encode())
    hash_weights(digest, G.net)
    return digest.hexdigest()


def onnx_with_check(
    G: TorchGenerator, target: str = "onnxruntime", tolerance: float = TOLERANCE
) -> tuple[bytes, Check]:
    """The verified ONNX bytes of G, for the `target` runtime (onnxruntime, openvino, or
    openvino-int8: the graph NNCF quantises), and their
    check in ONNX Runtime; with the exporter's graph optimisation, or without it when the
    optimised graph fails the check. The same G and tolerance again in this process, for a target
    that rewrites the same layers (export_key), gives the same bytes and check without tracing
    again (`_verified`)."""
    key = export_key(G, target, tolerance)
    if key in _verified:
        _verified.move_to_end(key)
        return _verified[key]
    data, check = _trace_and_check(G, target, tolerance)
    if len(data) <= VERIFIED_MAX_BYTES:
        _verified[key] = data, check
        while len(_verified) > VERIFIED_KEEP:
            _verified.popitem(last=False)
    return data, check


def _trace_and_check(G: TorchGenerator, target: str, tolerance: float) -> tuple[bytes, Check]:
    failures = []
    for optimize in (True, False):
        data = trace_onnx(G, optimize, target).SerializeToString()
        if len(data) > MAX_ONNX_BYTES:
            raise ExportError(f"the generator is {len(data) / 2**30:.1f} GiB: over ONNX's 2 GiB for one file")
        try:
            check = compare(G, OnnxRuntimeGenerator(data, "exported model"), tolerance)
        except Exception as e:  # a graph ONNX Runtime cannot run is a failed check too
            failures.append(f"optimize={optimize}: {e}")
            continue
        if check.max_abs_error <= tolerance:
            if failures:
                log.warning(
                    "the optimised ONNX graph failed its check (%s); exported without optimisation", failures[0]
                )
            return data, check
        failures.append(f"optimize={optimize}: {check.summary()}")
    raise ExportError("the ONNX export does not match PyTorch: " + "; ".join(failures) + ". Nothing was written.")


def onnx_bytes(G: TorchGenerator, target: str = "onnxruntime") -> bytes:
    return onnx_with_check(G, target)[0]


@dataclass
class ExportResult:
    paths: list[Path]
    check: Check
    format: str

    def summary(self) -> str:
        files = ", ".join(f"{p} ({p.stat().st_size / 2**20:.2f} MiB)" for p in self.paths)
        return f"exported {self.format}: {files}\n  verified: {self.check.summary()}"


FORMAT_NAMES = {"onnx": "ONNX", "openvino": "OpenVINO"}  # for messages: an ONNX export


def export(
    source: str | Path | TorchGenerator, fmt: str, out: str | Path, fp16_weights: bool = False, overwrite: bool = False
) -> ExportResult:
    """Export a trained generator to ONNX or OpenVINO IR, checked against PyTorch (`hetgan export`).

    Args:
        source: a run directory, a generator.safetensors, or a `TorchGenerator`.
        fmt: "onnx" (one .onnx file) or "openvino" (.xml + .bin).
        out: FILE.onnx or FILE.xml; written atomically, only after the check passed.
        fp16_weights: openvino only: store the weights in fp16 (half the size, a looser check).
        overwrite: replace `out` if it exists (refused otherwise).

    Returns:
        `ExportResult`: the files written and the check's largest difference and tolerance.

    Raises:
        ExportError: an unknown format, a suffix that does not match it, or an export whose
            samples differ from PyTorch's beyond the tolerance (nothing is written then).

    Example:
        >>> hetgan.export("runs/00000-dcgan_mnist", "onnx", "g.onnx")
        >>> G = hetgan.load_generator("g.onnx")                 # ONNX Runtime, the same samples
    """
    out = output_path(out, "--out", "generator.onnx", overwrite)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    if out.suffix.lower() != SUFFIXES[fmt]:
        raise ExportError(
            f"--out {out}: an {FORMAT_NAMES[fmt]} export is a {SUFFIXES[fmt]} file; name it e.g. "
            f"{out.with_suffix(SUFFIXES[fmt])}"
        )
    if fp16_weights and fmt != "openvino":
        raise ExportError("fp16 weights are an OpenVINO IR option; export --format openvino")
    G = torch_generator_from(source)
    data, check = onnx_with_check(G, "onnxruntime" if fmt == "onnx" else "openvino")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        atomic_write_bytes(out, data)
        return ExportResult([out], check, fmt)
    model = openvino_core("OpenVINO export").read_model(data)
    tolerance = FP16_WEIGHTS_TOLERANCE if fp16_weights else TOLERANCE
    check = write_openvino(
        model, out, G, metadata(G, "fp16-weights" if fp16_weights else "fp32"), tolerance, fp16_weights
    )
    return ExportResult([out, out.with_suffix(".bin")], check, fmt)


def write_openvino(
    model, out: Path, reference: SeededGenerator, info: dict[str, str], tolerance: float | None, fp16: bool = False
) -> Check:
    """Save an OpenVINO model as `out` (.xml) + .bin with `info` in its rt_info and the .bin's
    sha256, after checking the saved files against `reference`. The pair is written in a temp
    folder beside `out` and renamed into place, .bin first: a crash leaves the old pair or the
    new one, and an .xml beside the wrong .bin is refused when loaded (its sha256 differs)."""
    ov = require("openvino", "OpenVINO export")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        xml, bin_ = tmp / out.name, tmp / out.with_suffix(".bin").name
        ov.save_model(model, str(xml), compress_to_fp16=fp16)
        for key, value in {**info, "weights_sha256": file_sha256(bin_)}.items():
            model.set_rt_info(value, ["hetgan", key])
        sha = file_sha256(bin_)
        ov.save_model(model, str(xml), compress_to_fp16=fp16)  # the same weights, now with the metadata
        assert file_sha256(bin_) == sha, "OpenVINO wrote different weights for the same model"
        check = compare(reference, OpenVINOGenerator(xml, str(out)), tolerance)
        if tolerance is not None and check.max_abs_error > tolerance:
            raise ExportError(f"the OpenVINO model does not match PyTorch: {check.summary()}. Nothing was written.")
        for path in (bin_, xml):
            with open(path, "rb+") as f:  # on disk before the rename
                os.fsync(f.fileno())
            os.replace(path, out.parent / path.name)
        fsync_dir(out.parent)
        return check
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
