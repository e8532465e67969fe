"""Deployment: a generator leaves the training stack as a verified, self-describing model file
and runs on inference runtimes behind hetgan's one sampling interface.

- `export.py`: ONNX (torch's dynamo exporter) and OpenVINO IR, each checked against PyTorch
  before it is written, with the generator's config in the file's metadata.
- `runtimes.py`: ONNX Runtime (CPU, CUDA, TensorRT) and OpenVINO generators with the same
  `sample(n, seed)` as the torch one; `hetgan.load_generator` picks them by file or `backend`.
- `quantize.py`: int8 (OpenVINO + NNCF static, ONNX Runtime dynamic or static QDQ), with its
  calibration and its measured quality delta in the file.
- `bench.py`: `hetgan bench --deploy`, every backend and precision in one table.

Their packages are the `deploy` extra: pip install 'hetgan[deploy]'.
"""

from __future__ import annotations

import importlib
import threading

from hetgan.errors import HetganError

INSTALL = "pip install 'hetgan[deploy]'"


def require(module: str, what: str):
    """Import an optional package of the deploy extra, or say which install brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        package = module.split(".")[0]
        raise HetganError(
            f"{what} needs the package {package!r}, which is not installed here ({e}); install the deploy extra: "
            f"{INSTALL}"
        ) from None


_core = None
_core_lock = threading.Lock()


def openvino_core(what: str):
    """The process's one OpenVINO `Core`, made on first use (`what` names the caller in the error
    when OpenVINO is missing). One Core for every model: each Core sets an alternate signal stack
    on the calling thread, and once two were freed in the order they were made, the thread was left
    on a stack whose memory was gone, so the process's next SIGINT or SIGTERM (Ctrl-C, a server's
    shutdown) crashed it with SIGSEGV (tests/deploy/test_deploy.py reproduces it)."""
    global _core
    ov = require("openvino", what)
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core
