"""`hetgan serve` as a real process on a free loopback port, exercised over HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from hetgan.artifact import save_generator
from hetgan.models import build_models
from hetgan.sample_files import to_uint8
from hetgan.serving.server import bind_warning
from tests.conftest import CHROMIUM, CHROMIUM_FLAGS, tiny_config
from tests.serving.server_process import server, wait_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory, digits_npz_module):
    """A wider 64 px RGB DCGAN, slow enough on a CPU that requests queue behind one another. Its
    tests look at timing and status, not at its samples: its fresh BatchNorm statistics are
    written as they are (recalibrating them is 2048 samples of it, 10 s of a CPU core)."""
    cfg = tiny_config(f"npz:{digits_npz_module}")
    cfg.model.width, cfg.model.z_dim, cfg.data.channels, cfg.data.resolution = 64, 100, 3, 64
    G, _ = build_models(cfg.validate())
    return save_generator(G, cfg, tmp_path_factory.mktemp("wide") / "g.safetensors", recalibrated=True)


def expected(G, n: int, seed: int) -> np.ndarray:
    return to_uint8(G.sample(n, seed=seed))


def npz_images(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))["images"]


@pytest.mark.slow
def test_generate_in_every_format_gives_the_seeds_samples(small, tmp_path):
    path, G = small
    with server(path) as (client, _):
        images = npz_images(client.post("/v1/generate", json={"n": 16, "seed": 5, "format": "npz"}))
        assert np.array_equal(images, expected(G, 16, 5))
        subprocess.run(
            [sys.executable, "-m", "hetgan", "sample", "--artifact", str(path), "--n", "16", "--seed", "5",
             "--out", str(tmp_path / "s.png")], check=True, capture_output=True,
        )  # fmt: skip
        png = client.post("/v1/generate", json={"n": 16, "seed": 5})
        assert png.headers["content-type"] == "image/png"
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(Image.open(tmp_path / "s.png"))
        )
        body = client.post("/v1/generate", json={"n": 3, "seed": 5, "format": "json"}).json()
        decoded = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in body["images"]]
        assert body["seed"] == 5 and np.array_equal(np.stack(decoded), expected(G, 3, 5)[..., 0])
        truncated = npz_images(
            client.post("/v1/generate", json={"n": 4, "seed": 5, "truncation": 0.5, "format": "npz"})
        )
        assert not np.array_equal(truncated, images[:4])
        walk = client.post("/v1/interpolate", json={"seed_a": 5, "seed_b": 6, "frames": 5, "format": "json"}).json()
        frames = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in walk["images"]]
        assert len(frames) == 5
        # The walk starts at seed_a's sample and ends at seed_b's (batched with the others: one grey level).
        assert np.abs(frames[0].astype(int) - expected(G, 1, 5)[0, ..., 0]).max() <= 1
        assert np.abs(frames[-1].astype(int) - expected(G, 1, 6)[0, ..., 0]).max() <= 1
        assert np.abs(frames[2].astype(int) - frames[0]).max() > 1


@pytest.mark.slow
def test_same_seed_same_samples_under_concurrent_load(small):
    path, G = small
    rng = np.random.default_rng(1)
    asks = [(int(n), int(seed)) for n, seed in zip(rng.integers(1, 40, 48), rng.integers(0, 1000, 48), strict=True)]
    with server(path, "--max-batch", "32", "--max-wait-ms", "20") as (client, _):

        def ask(item):
            n, seed = item
            return npz_images(client.post("/v1/generate", json={"n": n, "seed": seed, "format": "npz"}))

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(ask, asks))
        batches = client.get("/metrics").text
    for (n, seed), images in zip(asks, results, strict=True):
        want = expected(G, n, seed)
        # Batched with other requests, a sample may come from another batch size's kernels: at
        # most one grey level apart, on a rounding boundary.
        assert images.shape == want.shape and np.abs(images.astype(int) - want).max() <= 1
    count = float(next(x.split()[-1] for x in batches.splitlines() if x.startswith("hetgan_batch_samples_count")))
    assert count < len(asks), "requests were never merged into one generator call"


@pytest.mark.slow
def test_bad_requests_get_a_clear_4xx_and_the_server_keeps_serving(small):
    path, _ = small
    with server(path, "--max-n", "64") as (client, _):
        cases = [
            ({"json": {"n": 65}}, 413, "n=65 is over this server's limit of 64"),
            ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
            ({"json": {"n": "16"}}, 422, "n: Input should be a valid integer"),
            ({"json": {"n": -3}}, 422, "n: Input should be greater than or equal to 1"),
            ({"json": {"n": 10**30}}, 422, "n:"),
            ({"json": {"n": 4, "format": "gif"}}, 422, "format: Input should be 'png', 'npz' or 'json'"),
            ({"json": {"n": 4, "colour": "red"}}, 422, "colour: Extra inputs are not permitted"),
            ({"json": {"seed": 1}}, 422, "n: Field required"),
            ({"json": [1, 2]}, 422, "must be a JSON object"),
            ({"json": {"n": 4, "truncation": 2}}, 422, "truncation: Input should be less than or equal to 1"),
            ({"content": b"{" + b" " * 5000 + b"}"}, 413, "the limit is 4096 bytes"),
            ({"content": b'{"n": 4}', "headers": {"content-type": "text/plain"}}, 415, "got text/plain"),
            ({"data": {"n": "4"}}, 415, "got application/x-www-form-urlencoded"),  # a blind cross-site form
            ({"content": b'{"n": 4}'}, 415, "got no Content-Type"),
        ]
        for kwargs, status, message in cases:
            response = client.post("/v1/generate", **kwargs)
            assert response.status_code == status and message in response.json()["error"], (kwargs, response.text)
        frames = client.post("/v1/interpolate", json={"seed_a": 0, "seed_b": 1, "frames": 33})
        assert frames.status_code == 413 and "limit of 32" in frames.json()["error"]
        missing, wrong_method = client.get("/v1/nothing"), client.get("/v1/generate")  # only POST takes the fast path
        assert (missing.status_code, wrong_method.status_code) == (404, 405)
        assert missing.json() == {"error": "Not Found: GET /v1/nothing"}  # one error shape for every status
        assert wrong_method.json()["error"].startswith("Method Not Allowed")
        huge = client.get("/healthz", headers={"X-Filler": "x" * 20_000})
        assert huge.status_code == 400 and "limit of 16384 bytes" in huge.text
        with socket.create_connection((client.base_url.host, client.base_url.port), timeout=10) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: ")  # one header without end
            for _ in range(40):
                with contextlib.suppress(OSError):  # the server may have closed the connection already
                    raw.sendall(b"y" * 1024)
            assert raw.recv(4096).startswith(b"HTTP/1.1 400")
        assert client.post("/v1/generate", json={"n": 2}).status_code == 200
        metrics = client.get("/metrics").text
    assert 'hetgan_requests_total{endpoint="/v1/generate",status="422"} 8.0' in metrics
    assert 'status="500"' not in metrics


def test_a_full_queue_is_refused_at_once_with_retry_after(small):
    """Refused before any of it is queued: the generator makes nothing for it."""

    def samples_made(client) -> float:
        metrics = client.get("/metrics").text.splitlines()
        return float(next(x.split()[-1] for x in metrics if x.startswith("hetgan_batch_samples_sum")))

    path, _ = small
    with server(path, "--max-batch", "4", "--max-queue", "8") as (client, _):
        before = samples_made(client)
        response = client.post("/v1/generate", json={"n": 36})  # 9 pieces of 4: more than the queue holds
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "at capacity" in response.json()["error"] and samples_made(client) == before
        assert client.post("/v1/generate", json={"n": 32}).status_code == 200  # 8 pieces fit
        assert samples_made(client) == before + 32


@pytest.mark.slow
def test_a_request_over_its_time_gets_504(wide):
    with server(wide, "--max-batch", "8", "--timeout-s", "0.05", "--warmup", "0") as (client, _):
        response = client.post("/v1/generate", json={"n": 256})
        assert response.status_code == 504 and "within 0.05 s" in response.json()["error"]
        assert client.get("/healthz").status_code == 200


def test_token_guards_everything_but_the_health_checks(small):
    path, _ = small
    with server(path, env={"HETGAN_SERVE_TOKEN": "s3cret"}) as (client, _):
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        for method, url in (("POST", "/v1/generate"), ("GET", "/v1/model"), ("GET", "/metrics"), ("GET", "/")):
            denied = client.request(method, url, json={"n": 1})
            assert denied.status_code == 401 and "needs its token" in denied.json()["error"]
            wrong = client.request(method, url, json={"n": 1}, headers={"Authorization": "Bearer guess"})
            assert wrong.status_code == 401
            ok = client.request(method, url, json={"n": 1}, headers={"Authorization": "Bearer s3cret"})
            assert ok.status_code == 200
        assert client.get("/").headers["www-authenticate"].startswith("Basic")  # the browser asks for it
        assert client.get("/", auth=("me", "s3cret")).status_code == 200


@pytest.mark.slow
def test_not_ready_until_warmed_up(wide):
    # 40 warm-up calls of 16 samples of this wide model: seconds of warming after /healthz answers.
    with server(wide, "--warmup", "40", "--max-batch", "16", ready=False) as (client, proc):
        first = client.get("/readyz")
        assert first.status_code == 503 and first.json()["error"] == "warming up"
        assert client.get("/healthz").status_code == 200
        wait_for(client, "/readyz", proc)
        model = client.get("/v1/model").json()
    assert model["arch"] == "dcgan" and model["sample_shape"] == [3, 64, 64] and model["backend"] == "torch"
    assert model["limits"]["warmup"] == 40


@pytest.mark.slow
def test_sigterm_finishes_accepted_requests(wide):
    with server(wide, "--max-batch", "8", "--warmup", "1") as (client, proc):
        with ThreadPoolExecutor(12) as pool:
            futures = [pool.submit(client.post, "/v1/generate", json={"n": 32, "format": "npz"}) for _ in range(12)]
            time.sleep(0.5)  # sent and queued: the first batches are running
            proc.send_signal(signal.SIGTERM)
            results = []
            for f in futures:
                try:
                    results.append(f.result().status_code)
                except httpx.TransportError:
                    results.append("refused")
        assert proc.wait(timeout=60) == 0
    answered = [r for r in results if r != "refused"]
    assert answered and all(r == 200 for r in answered), results


@pytest.mark.slow
def test_an_exported_model_is_served_on_its_runtime(small, tmp_path):
    path, G = small
    subprocess.run(
        [sys.executable, "-m", "hetgan", "export", "--artifact", str(path), "--format", "onnx",
         "--out", str(tmp_path / "g.onnx")], check=True, capture_output=True,
    )  # fmt: skip
    with server(tmp_path / "g.onnx") as (client, _):
        model = client.get("/v1/model").json()
        assert model["backend"] == "onnxruntime" and model["run_id"] == "00001-serve"
        images = npz_images(client.post("/v1/generate", json={"n": 8, "seed": 2, "format": "npz"}))
        assert np.abs(images.astype(int) - expected(G, 8, 2)).max() <= 1


def thread_stats(pid: int) -> dict[int, tuple[int, int]]:
    """Native thread id -> (niceness, CPU ticks used) for a process's threads, from /proc."""
    stats = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = (Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1]).split()
        stats[int(tid)] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return stats


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
@pytest.mark.slow
def test_the_generator_threads_run_below_the_event_loop(wide):
    with server(wide, "--nice", "7", "--threads", "2", "--streams", "2", "--warmup", "1") as (client, proc):
        for seed in range(6):
            assert client.post("/v1/generate", json={"n": 64, "seed": seed, "format": "npz"}).status_code == 200
        stats = thread_stats(proc.pid)
    main_nice = stats[proc.pid][0]  # the main thread runs the event loop
    others = {tid: nice_cpu for tid, nice_cpu in stats.items() if tid != proc.pid}
    busiest = max(others, key=lambda tid: others[tid][1])  # the generator's work is in its threads
    assert others[busiest][0] == main_nice + 7, stats
    assert sum(nice == main_nice + 7 for nice, _ in others.values()) >= 2, stats


def test_a_handler_that_fails_gets_a_500_that_is_counted_and_logged(small, caplog):
    """RequestGate's own call of the queued endpoints' handlers (past FastAPI, which would otherwise
    answer an unexpected exception): a 500 with a message, in the metrics, in the log."""
    from hetgan.serving.app import Metrics, RequestGate

    async def broken(request):
        raise RuntimeError("a bug")

    async def not_here(scope, receive, send):
        raise AssertionError("the queued endpoint's POST must not reach FastAPI")

    class Idle:
        full, depth = False, 0

    metrics = Metrics(lambda: 0)
    guard = RequestGate(not_here, None, metrics, Idle(), fast={"/v1/generate": broken})
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/generate",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "query_string": b"",
    }
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"] == "internal error (RuntimeError); the server logged it"
    assert "POST /v1/generate failed" in caplog.text and "a bug" in caplog.text
    labels = {"endpoint": "/v1/generate", "status": "500"}
    assert metrics.registry.get_sample_value("hetgan_requests_total", labels) == 1


def test_binding_beyond_loopback_warns():
    assert bind_warning("127.0.0.1", None) is None and bind_warning("localhost", None) is None
    assert bind_warning("::1", None) is None
    assert "reachable from other machines, with no token" in bind_warning("0.0.0.0", None)
    assert "no token" not in bind_warning("0.0.0.0", "t")


@pytest.mark.slow
@pytest.mark.program("chromium")
def test_web_page_in_headless_chromium(small, tmp_path):
    """A person's path through the page: it opens on a grid, offline; a click gives a grid that
    decodes, the seed steps, an interpolation strip appears, a bad n shows the server's message next
    to the form that sent it and marks the grid below as stale until a request succeeds."""
    from playwright.sync_api import sync_playwright

    path, _ = small
    with server(path, "--max-n", "100", env={"HETGAN_SERVE_TOKEN": "pw"}) as (client, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = browser.new_page(http_credentials={"username": "me", "password": "pw"})
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(str(client.base_url)) else None)
        page.goto(str(client.base_url) + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('dcgan generator')")
        page.wait_for_function("document.getElementById('grid').naturalWidth > 0")  # no click needed
        assert "16 samples of seed 0" in page.inner_text("#status")  # the form's defaults
        page.fill("#n", "9")
        page.fill("#seed", "4")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').textContent.includes('9 samples')")
        # 9 samples of 32 px: a 3x3 grid with 2 px gaps
        assert page.evaluate("[grid.naturalWidth, grid.naturalHeight]") == [104, 104]
        assert "9 samples of seed 4" in page.inner_text("#status")
        assert page.get_attribute("#download", "download") == "samples-seed4-n9.png"
        page.click("#next")
        page.wait_for_function("document.getElementById('status').textContent.includes('seed 5')")
        assert page.input_value("#seed") == "5"
        page.fill("#frames", "6")
        page.click("#interpolate")
        page.wait_for_function("document.getElementById('walk').naturalWidth > 0")
        assert page.evaluate("[walk.naturalWidth, walk.naturalHeight]") == [6 * 34 + 2, 36]
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        page.fill("#n", "1000")
        page.click("#generate")
        page.wait_for_function("document.getElementById('status').className === 'status error'")
        assert "413: n=1000 is over this server's limit of 100" in page.inner_text("#status")
        # said inside the samples form, above its grid, which is marked stale; the download goes
        said = "document.getElementById('status')"  # (the page's script has a function called status)
        assert page.evaluate(f"{said}.closest('fieldset') === grid.closest('fieldset')")
        assert page.evaluate(f"{said}.getBoundingClientRect().bottom <= grid.getBoundingClientRect().top")
        assert page.evaluate("grid.classList.contains('stale') && download.hidden")
        assert page.inner_text("#walk_status").startswith("6 frames")  # the other form keeps its own
        page.fill("#n", "4")
        page.click("#generate")
        page.wait_for_function("!document.getElementById('grid').classList.contains('stale')")
        browser.close()
    assert outside == []  # no CDN, nothing from outside the server
    assert (tmp_path / "page.png").stat().st_size > 10_000
    shutil.copy(tmp_path / "page.png", path.parent / "page_screenshot.png")


def test_the_model_description_names_no_path_of_this_machine(small, tmp_path):
    """`GET /v1/model` once returned the whole config, with this machine's absolute paths (data,
    feature network, teacher); a client gets what it needs to call the generator, no paths."""
    from hetgan.serving.app import describe
    from hetgan.serving.limits import ServeLimits

    path, G = small
    G.config.data.spec = f"folder:{tmp_path}/secret-photos"
    G.config.train.evalnet = str(tmp_path / "evalnet.safetensors")
    info = describe(G, ServeLimits())
    assert str(tmp_path) not in json.dumps(info) and "config" not in info
    assert info["arch"] == "dcgan" and info["sample_shape"] == [1, 32, 32] and info["conditional"] is False


def test_the_token_comes_from_a_file_and_a_token_on_the_command_line_warns(tmp_path, monkeypatch, caplog):
    """`--token` shows in the process list to every user of the machine: `--token-file` reads it
    from a file instead, and `--token` still works but says so."""
    from hetgan.cli import build_parser
    from hetgan.cli.serve import read_token
    from hetgan.errors import HetganError

    monkeypatch.delenv("HETGAN_SERVE_TOKEN", raising=False)
    parse = build_parser().parse_args
    (tmp_path / "token").write_text("s3cret\n")
    assert read_token(parse(["serve", "--run", "r", "--token-file", str(tmp_path / "token")])) == "s3cret"
    assert not caplog.records
    with caplog.at_level("WARNING", logger="hetgan"):
        assert read_token(parse(["serve", "--run", "r", "--token", "t0k"])) == "t0k"
    assert "process list" in caplog.text and "--token-file" in caplog.text
    (tmp_path / "empty").write_text("\n")
    for name, message in (("empty", "first line is empty"), ("missing", "cannot read it")):
        with pytest.raises(HetganError, match=message):
            read_token(parse(["serve", "--run", "r", "--token-file", str(tmp_path / name)]))
    monkeypatch.setenv("HETGAN_SERVE_TOKEN", "from-env")
    assert read_token(parse(["serve", "--run", "r"])) == "from-env"


def test_only_its_own_host_names_are_answered(small):
    """With no token (the default), a page on another site could read the service through DNS
    rebinding: its requests carry that site's Host. Only the loopback names, the bound address and
    --allowed-host are answered; anything else gets a 421 and the server keeps serving."""
    path, _ = small
    with server(path, "--allowed-host", "gan.internal") as (client, _):
        port = client.base_url.port
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "gan.internal", "GAN.internal:80"):
            assert client.get("/v1/model", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example", ""):
            refused = client.post("/v1/generate", json={"n": 1}, headers={"Host": host})
            assert refused.status_code == 421 and "does not answer for Host" in refused.json()["error"], host
        assert client.post("/v1/generate", json={"n": 1, "format": "npz"}).status_code == 200


def test_the_uvicorn_protocol_subclass_finds_the_hooks_it_overrides():
    """hetgan.serving.server subclasses uvicorn's private httptools protocol to bound a request's
    head; uvicorn is bounded in the serve extra, and this says what a newer one must still have."""
    import inspect

    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from hetgan.serving.server import http_protocol

    bounded = http_protocol(1024)
    assert issubclass(bounded, HttpToolsProtocol)
    for hook, params in (("data_received", ["data"]), ("on_headers_complete", []), ("on_message_complete", [])):
        assert list(inspect.signature(getattr(HttpToolsProtocol, hook)).parameters)[1:] == params, hook
    assert callable(HttpToolsProtocol.send_400_response)
