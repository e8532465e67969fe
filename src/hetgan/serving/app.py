"""The HTTP service: FastAPI over one generator and a dynamic batcher.

    POST /v1/generate     {n, seed, truncation?, class?, format: png|npz|json} -> a PNG grid, an npz, or base64 PNGs
    POST /v1/interpolate  {seed_a, seed_b, frames, truncation?, class?, format: png|json} -> frames from z_a to z_b
A conditional generator takes `class`: a class name or index, or a list of one per sample (default:
the classes in turn); `GET /v1/model` lists its classes.
    GET  /                the web page (no external assets)
    GET  /healthz         alive;  GET /readyz  model loaded and warmed up (503 before)
    GET  /v1/model        what is served: config, backend, precision, the quality figures it carries
    GET  /metrics         Prometheus text: requests by status, latency, batch sizes, queue depth

Every request is bounded: its body size (413), n and frames (422, the message names the limit),
its place in a bounded queue (503 with Retry-After), its time (504). With a token, every endpoint
but the health checks needs `Authorization: Bearer TOKEN` (or HTTP Basic with TOKEN as the
password, which is how a browser asks for the page).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import hmac
import io
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from typing import Literal

import numpy as np
import torch

from hetgan.deploy.load import generator_from
from hetgan.errors import HetganError
from hetgan.generator import slerp
from hetgan.serving import require
from hetgan.serving.batcher import Batcher, LatentDraw, QueueFull, lower_priority, other_threads
from hetgan.serving.limits import ServeLimits

fastapi = require("fastapi")
pydantic = require("pydantic")
prometheus = require("prometheus_client")
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse, Response  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field, ValidationError  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

log = logging.getLogger("hetgan")
OPEN_PATHS = ("/healthz", "/readyz")
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def request_host(scope) -> str:
    """The Host header's name, without the port and brackets, lower-cased ("" if none)."""
    for key, value in scope.get("headers", ()):
        if key == b"host":
            name = value.decode("latin-1").strip().lower()
            if name.startswith("["):  # [::1]:8000
                return name[1 : name.find("]")] if "]" in name else name
            return name.rsplit(":", 1)[0] if name.count(":") == 1 else name
    return ""


Label = int | str  # a class index or name


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n: int = Field(ge=1, le=2**31)
    seed: int = Field(default=0, ge=0, lt=2**63)
    truncation: float | None = Field(default=None, gt=0, le=1)
    label: Label | list[Label] | None = Field(default=None, alias="class")
    format: Literal["png", "npz", "json"] = "png"


class InterpolateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    seed_a: int = Field(ge=0, lt=2**63)
    seed_b: int = Field(ge=0, lt=2**63)
    frames: int = Field(default=8, ge=2, le=2**31)
    truncation: float | None = Field(default=None, gt=0, le=1)
    label: Label | None = Field(default=None, alias="class")
    format: Literal["png", "json"] = "png"


class Metrics:
    """The service's Prometheus metrics, in a registry of its own."""

    def __init__(self, batcher_depth) -> None:
        self.registry = prometheus.CollectorRegistry()
        self.requests = prometheus.Counter(
            "hetgan_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = prometheus.Histogram(
            "hetgan_request_seconds",
            "request latency",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.batch = prometheus.Histogram(
            "hetgan_batch_samples", "samples per generator call", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )  # fmt: skip
        self.generate = prometheus.Histogram(
            "hetgan_generate_seconds", "time of one generator call", registry=self.registry
        )
        depth = prometheus.Gauge("hetgan_queue_depth", "queued pieces waiting for a batch", registry=self.registry)
        depth.set_function(batcher_depth)

    def on_batch(self, samples: int, seconds: float) -> None:
        self.batch.observe(samples)
        self.generate.observe(seconds)


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def authorised(request: Request, token: str) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(value.strip().encode(), token.encode())
    if scheme.lower() == "basic":  # a browser's login prompt: any user name, the token as password
        try:
            password = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


async def read_json(request: Request, limit: int) -> dict | JSONResponse:
    """The body as a JSON object, read no further than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        return error(413, f"request body of {declared} bytes; the limit is {limit} bytes")
    # Only JSON is parsed: a page on another site can send a form or text/plain without the
    # browser asking first (no CORS preflight), but not application/json.
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        return error(
            415, f"the body must be JSON with Content-Type: application/json, got {media_type or 'no Content-Type'}"
        )
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return error(413, f"request body over the limit of {limit} bytes")
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return error(400, f'the body is not valid JSON ({e}); send e.g. {{"n": 16, "seed": 0}}')
    if not isinstance(value, dict):
        return error(422, f"the body must be a JSON object, got {type(value).__name__}")
    return value


def validation_message(e: ValidationError) -> str:
    parts = []
    for item in e.errors():
        where = ".".join(str(x) for x in item["loc"]) or "body"
        parts.append(f"{where}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(parts)


def uint8_images(samples: np.ndarray) -> np.ndarray:
    """[N, C, H, W] float32 in [-1, 1] -> uint8 [N, H, W, C], the numbers hetgan.sample_files.to_uint8
    gives (float32 arithmetic, round half to even), in numpy: for a batch's few images torch's
    per-op dispatch and its thread pool, busy beside the runtime's, cost more than the work. The
    batcher's workers apply it to each batch; uint8 input is taken as already converted."""
    if samples.dtype == np.uint8:
        return samples
    x = np.clip(samples, -1, 1)
    x += 1
    x *= np.float32(127.5)
    return np.rint(x).astype(np.uint8).transpose(0, 2, 3, 1)


def png_images(samples: np.ndarray, G, per_image: bool, ncol: int | None = None) -> list[bytes]:
    """PNG bytes: one grid of `ncol` columns (default: square-ish; a scatter plot for 2-D points),
    or one PNG per image."""
    from hetgan.sample_files import grid_image, png_bytes, scatter_png

    if samples.ndim == 2:
        return [scatter_png(torch.from_numpy(samples), getattr(G, "modes", None))]
    uint8 = uint8_images(samples)
    if not per_image:
        return [png_bytes(grid_image(uint8, ncol=ncol))]
    return [png_bytes(grid_image(uint8[i : i + 1], ncol=1, pad=0)) for i in range(len(uint8))]


def encoder(fmt: str, G, seed_info: dict, ncol: int | None = None) -> Callable[[np.ndarray], Response]:
    """The function that makes a request's response of its samples, in format `fmt`; a PNG grid
    of images has `ncol` columns (default: square-ish)."""

    def encode(samples: np.ndarray) -> Response:
        if fmt == "png":
            return Response(png_images(samples, G, per_image=False, ncol=ncol)[0], media_type="image/png")
        if fmt == "npz":
            buf = io.BytesIO()
            if samples.ndim == 2:
                np.savez(buf, points=samples.astype(np.float32))
            else:
                np.savez(buf, images=uint8_images(samples))
            return Response(buf.getvalue(), media_type="application/octet-stream")
        if samples.ndim == 2:
            return JSONResponse({**seed_info, "points": samples.tolist()})
        pngs = [base64.b64encode(p).decode() for p in png_images(samples, G, per_image=True)]
        return JSONResponse({**seed_info, "images": pngs, "media_type": "image/png"})

    return encode


class RequestGate:
    """Plain ASGI middleware in front of every request (starlette's BaseHTTPMiddleware costs a
    task and a stream per request): the token check, the status and latency metrics, and a 503 at
    once when the queue is already full, before the body is read. Under overload that keeps the
    answer to the excess a few microseconds of work instead of a request's.

    It also calls the POST handlers of the queued endpoints (`fast`: path -> handler(request) ->
    response) itself: FastAPI's routing and its stack of middlewares cost more CPU than the rest of
    such a request (benchmarks/RESULTS.md, "Serving"), and on a small server that CPU is the generator's.
    Everything else, those paths' other methods included, goes on to FastAPI."""

    def __init__(
        self,
        app,
        token: str | None,
        metrics: Metrics,
        batcher: Batcher,
        fast: dict | None = None,
        hosts: frozenset[str] = frozenset(LOOPBACK_HOSTS),
    ) -> None:
        self.app, self.token, self.metrics, self.batcher = app, token, metrics, batcher
        self.fast, self.hosts = fast or {}, hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_count(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            if response := self.refusal(scope, path):
                await response(scope, receive, send_and_count)
            elif (handler := self.fast.get(path)) and scope["method"] == "POST":
                await (await self.handle(handler, Request(scope, receive)))(scope, receive, send_and_count)
            else:
                await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)

    def refusal(self, scope, path: str) -> JSONResponse | None:
        """421 for a Host this server is not, 401 without the token, 503 when the queue is full;
        None to go on."""
        host = request_host(scope)
        if host not in self.hosts:
            return error(
                421, f"this server does not answer for Host {host!r}; start it with --allowed-host {host} to allow it"
            )
        if self.token and path not in OPEN_PATHS and not authorised(Request(scope), self.token):
            scheme = 'Basic realm="hetgan"' if path == "/" else 'Bearer realm="hetgan"'
            return error(401, "this server needs its token: Authorization: Bearer TOKEN", {"WWW-Authenticate": scheme})
        if path in QUEUED_PATHS and self.batcher.full:
            return error(503, "the server is at capacity (its queue is full); retry shortly", {"Retry-After": "1"})
        return None

    @staticmethod
    async def handle(handler, request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as e:  # what FastAPI's ServerErrorMiddleware would have done: a 500, logged
            log.exception("%s %s failed", request.method, request.url.path)
            return error(500, f"internal error ({type(e).__name__}); the server logged it")


class Service:
    """What the queued endpoints do, over one generator, its batcher and the service's limits."""

    def __init__(self, G, limits: ServeLimits, streams: int = 1, nice: int = 0) -> None:
        self.G, self.limits, self.nice = G, limits, nice
        images = len(G.shape) == 3  # served as uint8, converted a batch at a time in the batcher's workers
        self.batcher = Batcher(
            G.generate,
            limits.max_batch,
            limits.max_wait_ms / 1000,
            limits.max_queue,
            workers=streams,
            nice=nice,
            finish=uint8_images if images else None,
        )
        self.metrics = Metrics(lambda: self.batcher.depth)
        self.batcher.on_batch = self.metrics.on_batch
        self.ready = False

    async def warm_up(self) -> None:
        limits = self.limits
        z = np.zeros((limits.max_batch, self.G.z_dim), dtype=np.float32)
        y = self.G.labels(limits.max_batch)
        for _ in range(limits.warmup):
            await self.batcher.submit(z, None if y is None else y.numpy())
        # What is loaded by now (torch, the runtime, the model) lives as long as the server: out of
        # the collector's sight, a full collection no longer walks its millions of objects while
        # holding the GIL, which stalled every request by a few hundred ms (benchmarks/RESULTS.md, "Serving").
        gc.collect()
        gc.freeze()
        if self.nice:
            changed = lower_priority(self.nice, other_threads())  # the runtime's threads exist by now
            log.info("the generator's %d threads run at niceness +%d: the event loop goes first", changed, self.nice)
        self.ready = True
        log.info("warmed up: %d generator calls at batch %d; ready", limits.warmup, limits.max_batch)

    async def run(self, z: np.ndarray | LatentDraw, label, encode: Callable[[np.ndarray], Response]) -> Response:
        """`encode(samples)` for z, of classes `label` (one, or one per code) where G is
        conditional; encoded in the batcher's worker (see `Batcher.submit`). Or the error."""
        try:
            y = self.G.labels(len(z), label)
        except HetganError as e:
            return error(422, f"class: {e}")
        timeout = self.limits.timeout_s
        try:
            async with asyncio.timeout(timeout):  # no task of its own, as wait_for makes
                return await self.batcher.submit(z, None if y is None else y.numpy(), encode)
        except QueueFull as e:
            return error(503, f"the server is at capacity ({e}); retry shortly", {"Retry-After": "1"})
        except TimeoutError:
            return error(504, f"the request did not finish within {timeout:g} s")

    async def parse(self, request: Request, model: type[BaseModel]):
        """The request's body as `model`, or the 4xx response that says what is wrong with it."""
        body = await read_json(request, self.limits.max_body_bytes)
        if isinstance(body, JSONResponse):
            return body
        try:
            return model.model_validate(body)
        except ValidationError as e:
            return error(422, validation_message(e))

    async def generate(self, request: Request):
        req, G, limits = await self.parse(request, GenerateRequest), self.G, self.limits
        if isinstance(req, JSONResponse):
            return req
        if req.n > limits.max_n:
            return error(413, f"n={req.n} is over this server's limit of {limits.max_n} samples per request")
        info = {"n": req.n, "seed": req.seed, "truncation": req.truncation}
        z = LatentDraw(req.n, lambda: G.latent(req.n, req.seed, req.truncation).numpy())
        return await self.run(z, req.label, encoder(req.format, G, info))

    async def interpolate(self, request: Request):
        req, G, limits = await self.parse(request, InterpolateRequest), self.G, self.limits
        if isinstance(req, JSONResponse):
            return req
        if req.frames > limits.max_frames:
            return error(413, f"frames={req.frames} is over this server's limit of {limits.max_frames}")
        a, b = (G.latent(1, seed, req.truncation)[0] for seed in (req.seed_a, req.seed_b))
        label = req.label if req.label is not None or not G.n_classes else 0  # one class along the walk
        info = {"seed_a": req.seed_a, "seed_b": req.seed_b, "frames": req.frames}
        return await self.run(slerp(a, b, req.frames).numpy(), label, encoder(req.format, G, info, ncol=req.frames))


def create_app(
    G,
    limits: ServeLimits | None = None,
    token: str | None = None,
    description: dict | None = None,
    streams: int = 1,
    nice: int = 0,
    allowed_hosts: tuple[str, ...] = (),
):
    """The ASGI app that `hetgan serve` runs, for those who embed it in their own server.

    Args:
        G: a generator from `hetgan.load_generator` (any backend), or a path it takes.
        limits: the bounds on every request (`ServeLimits`: samples, body size, queue, time).
        token: require `Authorization: Bearer TOKEN` on every endpoint but /healthz.
        streams: generator calls at once (G loaded with as many streams).
        nice: how much lower than the event loop's the priority of the generator threads is set
            once warmed up (Linux; 0 leaves it).
        allowed_hosts: Host names the app answers besides the loopback ones (localhost,
            127.0.0.1, ::1); any other Host header gets a 421, so that a page on another site
            cannot read the service through DNS rebinding.

    Returns:
        An ASGI callable: the request gate (token, metrics, 503 when the queue is full) in front
        of the FastAPI app, which is its `.app`. Run it with any ASGI server.

    Example:
        >>> app = hetgan.create_app("runs/00000-dcgan_mnist")
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    G = generator_from(G)
    limits = limits or ServeLimits()
    service = Service(G, limits, streams, nice)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.batcher.start()
        warm = asyncio.get_running_loop().create_task(service.warm_up())
        yield
        warm.cancel()
        await service.batcher.stop()  # uvicorn has finished the accepted requests by now

    app = FastAPI(title="hetgan", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(HTTPException)
    async def one_error_shape(request: Request, exc: HTTPException):  # 404, 405: {"error": ...} as every other
        return error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}", exc.headers)

    app.state.service = service
    app.post("/v1/generate")(service.generate)
    app.post("/v1/interpolate")(service.interpolate)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive"}

    @app.get("/readyz")
    async def readyz():
        if not service.ready:
            return error(503, "warming up", {"Retry-After": "1"})
        return {"status": "ready"}

    @app.get("/v1/model")
    async def model():
        return description or describe(G, limits)

    @app.get("/metrics")
    async def prometheus_metrics():
        registry = service.metrics.registry
        return Response(prometheus.generate_latest(registry), media_type=prometheus.CONTENT_TYPE_LATEST)

    @app.get("/")
    async def page():
        return HTMLResponse(resources.files("hetgan.serving").joinpath("page.html").read_text(encoding="utf-8"))

    # Outside FastAPI's own middleware stack, so that a request refused here (401, or 503 when the
    # queue is full) costs none of it: under overload the refusals are most of the traffic.
    fast = {"/v1/generate": service.generate, "/v1/interpolate": service.interpolate}
    hosts = frozenset(h.lower() for h in (*LOOPBACK_HOSTS, *allowed_hosts))
    return RequestGate(app, token, service.metrics, service.batcher, fast, hosts)


ENDPOINTS = ("/", "/healthz", "/readyz", "/v1/generate", "/v1/interpolate", "/v1/model", "/metrics")
QUEUED_PATHS = ("/v1/generate", "/v1/interpolate")


def describe(G, limits: ServeLimits) -> dict:
    """What `GET /v1/model` says: what a client needs to call the generator (its architecture,
    shapes, classes, backend, limits), and nothing of the machine it runs on: the run's config
    holds absolute paths of this machine (data, feature network, teacher), so it is not sent."""
    info = {
        "arch": G.config.model.arch,
        "preset": G.config.preset,
        "z_dim": G.z_dim,
        "sample_shape": list(G.shape),
        "output_range": [-1, 1] if len(G.shape) == 3 else None,
        "conditional": bool(G.n_classes),
        "classes": G.class_names,  # [] for an unconditional generator
        "backend": G.backend,
        "precision": G.precision,
        "run_id": G.run_id,
        "limits": asdict(limits),
    }
    metadata = getattr(G, "metadata", {})
    for key in ("quality", "quantization"):
        if metadata.get(key):
            info[key] = metadata[key]
    return info
