"""Inference runtimes behind hetgan's one sampling interface.

An exported generator (`.onnx`, OpenVINO IR `.xml`) loads as a `RuntimeGenerator`: the same
`sample(n, seed)`, `sample_batches` and `config` as the eager PyTorch `Generator`, with z drawn on
the CPU exactly as there, so a seed gives the same samples on every backend within its tolerance
(hetgan.deploy.export.TOLERANCE for fp32). `hetgan.load_generator` picks the backend from the file
or from `backend=`; sample, eval, bench and serve do not care which runs.

    G = hetgan.load_generator("g.onnx")                       # ONNX Runtime on the CPU
    G = hetgan.load_generator("g.xml")                        # OpenVINO on the CPU
    G = hetgan.load_generator("runs/00000-dcgan_mnist", backend="openvino")  # exported in memory
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
from pathlib import Path

import numpy as np
import torch

from hetgan.config import from_dict
from hetgan.deploy import openvino_core, require
from hetgan.errors import CheckpointError, ConfigError, HetganError
from hetgan.generator import SeededGenerator
from hetgan.models import sample_shape

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
FORMAT = "hetgan.exported-generator/1"  # the metadata that makes a model file a hetgan generator
ONNX_PREFIX = "hetgan."  # ONNX metadata_props keys; OpenVINO keeps the same keys under rt_info["hetgan"]
JSON_METADATA = ("config", "input", "labels", "output", "quality", "quantization")  # stored as JSON text
EXPORT_HINT = "export one with `hetgan export --run RUN --format onnx|openvino --out FILE`"


def file_backend(path: Path) -> str:
    """The backend a model file is for: onnxruntime for .onnx, openvino for .xml, torch otherwise
    (a run directory or a generator.safetensors)."""
    return {".onnx": "onnxruntime", ".xml": "openvino"}.get(path.suffix.lower(), "torch")


def cpu_threads() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class RuntimeGenerator(SeededGenerator):
    """A generator run by an inference runtime, described by the metadata its file carries."""

    device = torch.device("cpu")  # where samples come back; the runtime may compute elsewhere

    def __init__(self, metadata: dict[str, str], where: str) -> None:
        if metadata.get("format") != FORMAT:
            raise CheckpointError(
                f"{where}: not a hetgan generator (its metadata has format {metadata.get('format')!r}, expected "
                f"{FORMAT!r}); {EXPORT_HINT}"
            )
        # The file stores strings; the structured entries are JSON in them. A caller reads
        # `metadata["quality"]` as the dict it is.
        self.metadata = {key: json.loads(value) if key in JSON_METADATA else value for key, value in metadata.items()}
        self.where = where
        self.config = from_dict(self.metadata["config"], where=f"{where} metadata")
        self.z_dim = self.config.model.z_dim
        self.shape = sample_shape(self.config)
        self.precision = metadata.get("precision", "fp32")
        self.run_id = metadata.get("run_id") or None

    def _generate(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z [B, z_dim] float32 (and y [B] int64 for a conditional model) -> samples [B, *shape]
        float32, on the CPU."""
        if z.ndim != 2 or z.shape[1] != self.z_dim or not z.is_floating_point():
            raise HetganError(
                f"{self.where}: z must be a float tensor [batch, {self.z_dim}], got {z.dtype} {list(z.shape)}"
            )
        inputs = [np.ascontiguousarray(z.detach().cpu().float().numpy())]
        if y is not None:
            inputs.append(np.ascontiguousarray(y.detach().cpu().numpy()))
        out = self.run(*inputs)
        return torch.from_numpy(out).view(len(z), *self.shape)

    def run(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        """The model on z (and y, its second input, for a conditional model)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.where}, {self.precision}, {self.config.model.arch})"


class OnnxRuntimeGenerator(RuntimeGenerator):
    """An ONNX model in ONNX Runtime: the CPU provider with its threads set explicitly, or the CUDA
    provider (`device` cuda[:i]), or TensorRT (backend tensorrt: fp16, engines cached on disk).
    A session runs calls from several threads at once: `streams` of them share the `threads`."""

    def __init__(
        self, model: bytes | Path, where: str, device: str = "cpu", threads: int | None = None, streams: int = 1, **kw
    ):
        ort = require("onnxruntime", "the onnxruntime backend")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, (threads or cpu_threads()) // streams)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise
        providers = ort_providers(ort, device, kw.get("tensorrt", False), kw.get("cache_dir"))
        try:
            self.source = model if isinstance(model, bytes) else str(model)
            self.session = ort.InferenceSession(self.source, options, providers=providers)
        except Exception as e:  # ORT raises its own types (InvalidProtobuf, Fail, NoSuchFile...)
            raise CheckpointError(
                f"{where}: ONNX Runtime cannot load this model ({_first_line(e)}); {EXPORT_HINT}"
            ) from None
        super().__init__(dict(_strip(self.session.get_modelmeta().custom_metadata_map)), where)
        self.backend = "tensorrt" if kw.get("tensorrt") else "onnxruntime"
        self.providers = self.session.get_providers()
        if isinstance(providers[0], tuple) and self.providers[0] != providers[0][0]:
            # ONNX Runtime falls back to the next provider when one cannot start (its libraries missing)
            raise ConfigError(
                f"{where}: ONNX Runtime could not start {providers[0][0]} and fell back to {self.providers[0]}: "
                f"{GPU_HINT}"
            )
        self.input_names = [i.name for i in self.session.get_inputs()]

    def run(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return self.session.run(None, dict(zip(self.input_names, (z, y) if y is not None else (z,), strict=True)))[0]


GPU_HINT = (
    "it needs an NVIDIA GPU, ONNX Runtime's GPU build and, for tensorrt, TensorRT 10: "
    "pip uninstall onnxruntime && pip install onnxruntime-gpu 'tensorrt-cu12<11' (hetgan's `gpu` extra)"
)


def preload_gpu_libraries(ort, tensorrt: bool) -> None:
    """Load the CUDA, cuDNN and TensorRT libraries that pip installed (nvidia-*, tensorrt-cu12) into
    this process, so ONNX Runtime's GPU providers find them without LD_LIBRARY_PATH: ONNX Runtime's
    own preload for CUDA and cuDNN, and importing TensorRT's Python package, which loads its
    libraries. Whatever is missing is left for the provider's start to report."""
    if hasattr(ort, "preload_dlls"):
        with contextlib.suppress(Exception):
            ort.preload_dlls()
    if tensorrt:
        with contextlib.suppress(ImportError):
            import tensorrt  # noqa: F401


def ort_providers(ort, device: str, tensorrt: bool, cache_dir: Path | None) -> list:
    """ONNX Runtime's execution providers for a device: CPU, CUDA[:i], or TensorRT with fp16 and
    an engine cache (it builds engines per input shape; the cache saves minutes at the next start)."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not tensorrt:
        return ["CPUExecutionProvider"]
    if kind not in ("cuda", "auto", "cpu"):
        raise ConfigError(f"the onnxruntime backend runs on cpu or cuda[:i], not {device!r}")
    wanted = "TensorrtExecutionProvider" if tensorrt else "CUDAExecutionProvider"
    if wanted not in ort.get_available_providers():
        if kind == "auto" and not tensorrt:
            return ["CPUExecutionProvider"]
        raise ConfigError(
            f"ONNX Runtime here has no {wanted} (it has {', '.join(ort.get_available_providers())}): {GPU_HINT}"
        )
    preload_gpu_libraries(ort, tensorrt)
    options = {"device_id": int(index or 0)}
    cuda = ("CUDAExecutionProvider", options)
    if not tensorrt:
        return [cuda, "CPUExecutionProvider"]
    cache = str(cache_dir or Path.home() / ".cache" / "hetgan" / "tensorrt")
    trt = {**options, "trt_fp16_enable": True, "trt_engine_cache_enable": True, "trt_engine_cache_path": cache}
    return [("TensorrtExecutionProvider", trt), cuda, "CPUExecutionProvider"]


class OpenVINOGenerator(RuntimeGenerator):
    """An OpenVINO model (IR, or ONNX read by OpenVINO) compiled for the CPU, in f32 (OpenVINO
    would pick bf16 by itself on CPUs with bf16 units), `threads` threads in all.

    `streams` > 1 splits those threads into that many streams, each with an infer request of its
    own, so that as many callers (threads) can run the model at once, each on its own batch and
    cores: `hetgan serve` runs that many batches at a time."""

    def __init__(
        self, model, where: str, device: str = "cpu", threads: int | None = None, streams: int = 1, **kw
    ) -> None:
        core = openvino_core("the openvino backend")
        if device not in ("cpu", "auto"):
            raise ConfigError(f"the openvino backend runs on the cpu here, not {device!r}")
        path = Path(model) if isinstance(model, Path | str) else None
        if isinstance(model, Path | str | bytes):
            model = read_openvino(core, model, where)
        metadata = openvino_metadata(model)
        if path is not None and path.suffix.lower() == ".xml":
            check_weights(metadata, path.with_suffix(".bin"), where)
        super().__init__(metadata, where)
        self.backend = "openvino"
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": max(threads or cpu_threads(), streams)}
        config |= {"NUM_STREAMS": streams} if streams > 1 else {"PERFORMANCE_HINT": "LATENCY"}
        self.model, self.core, self.compile_config = model, core, config
        self.compiled = core.compile_model(model, "CPU", config)
        self.requests = queue.SimpleQueue()  # idle infer requests, one per stream
        for _ in range(streams):
            self.requests.put(self.compiled.create_infer_request())

    def run(self, z: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        request = self.requests.get()
        try:
            # Shared: the request reads z (and y) where they are and returns no copies of its outputs
            # (by default it copies both ways, which costs a small int8 model a noticeable share of its speed);
            # the one copy below is needed, as the request reuses its output buffer.
            request.infer({0: z} if y is None else {0: z, 1: y}, share_inputs=True, share_outputs=True)
            return request.get_output_tensor(0).data.copy()
        finally:
            self.requests.put(request)


def read_openvino(core, model: Path | str | bytes, where: str):
    try:
        if isinstance(model, bytes):  # an ONNX model in memory
            return core.read_model(model)
        path = Path(model)
        if path.suffix.lower() == ".xml" and not path.with_suffix(".bin").exists():
            raise CheckpointError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing; {EXPORT_HINT}")
        return core.read_model(str(path))
    except CheckpointError:
        raise
    except Exception as e:
        if isinstance(model, Path | str) and Path(model).suffix.lower() == ".xml":
            weights = Path(model).with_suffix(".bin")
            raise CheckpointError(
                f"{where}: OpenVINO cannot read it: the model file or its weights file {weights.name} "
                f"({weights.stat().st_size} bytes) is damaged or truncated ({_first_line(e)}); {EXPORT_HINT}"
            ) from None
        raise CheckpointError(f"{where}: OpenVINO cannot read this model ({_first_line(e)}); {EXPORT_HINT}") from None


def openvino_metadata(model) -> dict[str, str]:
    """hetgan's keys from an OpenVINO model: rt_info["hetgan"] of an IR, or the ONNX
    metadata_props that OpenVINO keeps as rt_info["framework"] when it reads an .onnx."""
    for section in ("hetgan", "framework"):
        if model.has_rt_info([section]):
            info = {k: str(v) for k, v in model.get_rt_info([section]).value.items()}
            info = dict(_strip(info)) if section == "framework" else info
            if info.get("format"):
                return info
    return {}


def check_weights(metadata: dict[str, str], bin_path: Path, where: str) -> None:
    """An IR's .xml records its .bin's sha256: an .xml beside another export's .bin is refused."""
    expected = metadata.get("weights_sha256")
    if expected and expected != file_sha256(bin_path):
        raise CheckpointError(
            f"{where}: {bin_path.name} is not the weights file exported with it (its sha256 differs); {EXPORT_HINT}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _strip(items: dict[str, str]):
    for key, value in items.items():
        if key.startswith(ONNX_PREFIX):
            yield key[len(ONNX_PREFIX) :], value


def _first_line(e: Exception) -> str:
    """The first line of a runtime's error that says something: OpenVINO's start with where in
    its own sources it was raised ("Exception from src/inference/src/cpp/core.cpp:84:")."""
    lines = [line.strip() for line in (str(e).strip() or type(e).__name__).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (telling or lines)[0][:300]


RUNTIMES = {"onnxruntime": OnnxRuntimeGenerator, "tensorrt": OnnxRuntimeGenerator, "openvino": OpenVINOGenerator}
