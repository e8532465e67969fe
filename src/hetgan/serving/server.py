"""Running the service: load the generator, build the app, serve it with uvicorn until SIGTERM or
Ctrl-C, then finish the requests already accepted (up to the request timeout) and stop."""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import signal
import sys

from hetgan.deploy.runtimes import cpu_threads
from hetgan.errors import HetganError
from hetgan.serving import require
from hetgan.serving.limits import ServeLimits

log = logging.getLogger("hetgan")
HEAD_LIMIT = 16 * 1024  # bytes of a request line and headers
GENERATOR_NICE = 10  # the generator's threads' niceness above the event loop's (Linux)


def serve(
    source: str,
    backend: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    streams: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    limits: ServeLimits | None = None,
    nice: int = GENERATOR_NICE,
    allowed_hosts: tuple[str, ...] = (),
) -> None:
    """Serve samples of a generator over HTTP, with a web page, until SIGINT or SIGTERM (`hetgan serve`).

    Args:
        source: a run directory, a generator.safetensors, an exported .onnx or OpenVINO .xml.
        backend: what runs G (see `hetgan.load_generator`; default: the file's).
        device: where G runs (torch and onnxruntime).
        threads: CPU threads of the generator (default: every core), shared by `streams`
            generator calls at once (default 2, 1 on one core).
        host: the address to bind (default 127.0.0.1: this machine only).
        port: the port to listen on.
        token: require `Authorization: Bearer TOKEN` (binding beyond loopback without one warns).
        limits: the bounds on every request (`ServeLimits`).
        nice: how much lower the generator threads' priority is than the HTTP side's (Linux).
        allowed_hosts: Host names to answer besides the loopback ones and `host` (421 otherwise).

    Blocks until stopped; the accepted requests are answered first. `hetgan.create_app` gives the
    ASGI app itself, to embed.

    Example:
        >>> hetgan.serve("runs/00000-dcgan_mnist", port=8000)
    """
    uvicorn = require("uvicorn")
    from hetgan.deploy.load import load_generator
    from hetgan.serving.app import create_app

    limits = limits or ServeLimits()
    if hold_freed_memory():
        log.debug("glibc's malloc keeps freed memory for reuse")
    threads = cpu_threads() if threads is None else threads
    streams = serving_streams(threads) if streams is None else streams
    check_threads(threads, streams)
    if device == "cpu":
        import torch

        # The torch backend's pool, per stream (load_generator sets the runtimes').
        torch.set_num_threads(max(1, threads // streams))
    G = load_generator(source, device=device, backend=backend, threads=threads, streams=streams)
    if warning := bind_warning(host, token):
        log.warning("%s", warning)
    hosts = (*allowed_hosts, *(() if host in ("0.0.0.0", "::") else (host,)))
    app = create_app(G, limits, token, streams=streams, nice=nice, allowed_hosts=hosts)
    log.info(
        "serving %s (%s %s, %d CPU threads in %d streams) on http://%s:%d/",
        *(source, G.backend, G.precision, threads, streams, host, port),
    )
    # uvicorn finishes the accepted requests on SIGTERM, then raises the signal again under the
    # handler it found: a no-op one makes that a clean exit (status 0), as `hetgan train` has.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=http_protocol(HEAD_LIMIT),
        # No limit_concurrency: uvicorn counts open connections against it and, past it, answers
        # every request on every connection 503, so a crowd of keep-alive clients got nothing at
        # all (benchmarks/RESULTS.md, "Serving"). The queue bound above refuses the excess instead.
        timeout_graceful_shutdown=int(limits.timeout_s) + 1,  # accepted requests finish or time out first
        h11_max_incomplete_event_size=HEAD_LIMIT,  # where h11 is the fallback
    )
    log.info("stopped")


def http_protocol(head_limit: int):
    """uvicorn's httptools protocol with a bound on the request line and headers, or "h11" (whose
    bound is `h11_max_incomplete_event_size`) where httptools is not installed. httptools parses in
    C, at a fraction of h11's CPU per request, CPU the generator gets back. uvicorn bounds neither
    its parser nor its buffers, so without this a client could send headers without end."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class BoundedHttpTools(HttpToolsProtocol):
        head_bytes, reading_head = 0, True  # bytes since the request began, until its headers end

        def data_received(self, data: bytes) -> None:
            if self.reading_head:
                self.head_bytes += len(data)
                if self.head_bytes > head_limit:
                    self.send_400_response(f"request line and headers over this server's limit of {head_limit} bytes")
                    return
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self.reading_head, self.head_bytes = False, 0
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.reading_head = True
            super().on_message_complete()

    return BoundedHttpTools


def hold_freed_memory(mmap_below: int = 32 << 20, trim_above: int = 128 << 20) -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of giving it back to
    the kernel at once: blocks under `mmap_below` bytes come from the heap, and the heap shrinks only
    when more than `trim_above` bytes are free at its top. True if set; False where the C library is
    not glibc (nothing is changed there).

    Every batch allocates and frees a few MB of temporaries (the runtime's output copy, the uint8
    images). With glibc's defaults a heap whose top is freed is trimmed at once, so the next batch
    faults the same pages in again, in the kernel; at 32 clients on an int8 model one batch worker
    spent about half its CPU there. Set, the int8 model served more, and the fp32 default, whose
    workers had no such churn, the same (benchmarks/RESULTS.md, "Serving"). Setting either
    threshold turns off glibc's own adjustment of both, so both are set (each alone was slower than
    neither). The cost: up to `trim_above` bytes freed but
    still resident."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # malloc.h
    return mallopt(M_MMAP_THRESHOLD, mmap_below) == 1 and mallopt(M_TRIM_THRESHOLD, trim_above) == 1


def check_threads(threads: int, streams: int) -> None:
    """A clear error for thread and stream counts the runtimes cannot be given."""
    if threads < 1:
        raise HetganError(f"--threads must be at least 1, got {threads}")
    if not 1 <= streams <= threads:
        raise HetganError(
            f"--streams must be between 1 and the threads ({threads}), got {streams}: each stream runs on a thread "
            "of its own at least; pass fewer streams or more --threads"
        )


def serving_streams(threads: int) -> int:
    """Generator calls at once when serving: two where there are two threads or more, each stream
    with half of them. One stream's threads wait on each other at every layer, and when the event
    loop takes a core from one of them, all wait; two streams run two batches on their own cores,
    and one goes on while the other is held up; on 2 cores that served more than one stream of two
    threads or one thread with a core left to HTTP (benchmarks/RESULTS.md, "Serving")."""
    return 2 if threads >= 2 else 1


def bind_warning(host: str, token: str | None) -> str | None:
    """What to say when the service will be reachable from other machines."""
    if _is_loopback(host):
        return None
    unguarded = "" if token else ", with no token (--token-file or $HETGAN_SERVE_TOKEN)"
    return (
        f"binding {host}: the service is reachable from other machines{unguarded}; it answers only the Host "
        "names it is given (--allowed-host NAME for each name clients use)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
