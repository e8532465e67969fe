"""The bounds of `hetgan serve`, each a flag of the same name (`--max-n`, `--timeout-s`, ...)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hetgan.errors import HetganError


@dataclass
class ServeLimits:
    max_n: int = 256  # samples per request
    max_frames: int = 32  # interpolation frames per request
    max_body_bytes: int = 4096  # a request body is a few small JSON fields
    max_batch: int = 256  # samples per generator call: 256 served more img/s than 64 or 128 at 32 clients
    max_wait_ms: float = 2.0  # how long the first queued piece waits for others
    max_queue: int = 64  # queued pieces (of at most max_batch samples each)
    timeout_s: float = 30.0  # per request, queue wait included
    warmup: int = 3  # generator calls at max_batch before /readyz says ready

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if value < 0 or (value == 0 and name not in ("warmup", "max_wait_ms")):
                flag = "--" + name.replace("_", "-")
                raise HetganError(f"{flag} must be {'at least 0' if name == 'warmup' else 'positive'}, got {value}")
