"""Running the service: load the generator, build the app, serve it with uvicorn until SIGTERM or
Ctrl-C, then finish the requests already accepted (up to the request timeout) and stop."""

from __future__ import annotations

import ipaddress
import logging
import signal

from hetgan.serve import require
from hetgan.serve.limits import ServeLimits

log = logging.getLogger("hetgan")


def serve(
    source: str,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    limits: ServeLimits | None = None,
) -> None:
    """Serve the generator at `source` (a run, .safetensors, .onnx or .xml) on host:port."""
    uvicorn = require("uvicorn")
    from hetgan.artifact import load_generator
    from hetgan.serve.app import create_app

    limits = limits or ServeLimits()
    G = load_generator(source, device=device, backend=backend, threads=threads)
    if warning := bind_warning(host, token):
        log.warning("%s", warning)
    app = create_app(G, limits, token)
    log.info("serving %s (%s %s) on http://%s:%d/", source, G.backend, G.precision, host, port)
    # uvicorn finishes the accepted requests on SIGTERM, then raises the signal again under the
    # handler it found: a no-op one makes that a clean exit (status 0), as `hetgan train` has.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        # No limit_concurrency: uvicorn counts open connections against it and, past it, answers
        # every request on every connection 503, so a crowd of keep-alive clients got nothing at
        # all (benchmarks/RESULTS.md). The queue bound above refuses the excess instead.
        timeout_graceful_shutdown=int(limits.timeout_s) + 1,  # accepted requests finish or time out first
        h11_max_incomplete_event_size=16 * 1024,  # request line and headers
    )
    log.info("stopped")


def bind_warning(host: str, token: str | None) -> str | None:
    """What to say when the service will be reachable from other machines."""
    if _is_loopback(host):
        return None
    unguarded = "" if token else ", with no token (--token or $HETGAN_SERVE_TOKEN)"
    return f"binding {host}: the service is reachable from other machines{unguarded}"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
