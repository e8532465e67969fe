"""Load on `hetgan serve`, over loopback only, bounded in requests and time; it stops by itself.

    python benchmarks/serve_load.py (--run RUN | --artifact FILE) [--backend openvino] [--seconds 10]
                                    [--clients 1 8 32] [--n 16] [--soak-requests 10000]

1. Offline: the backend's img/s at batch 64 in this process (`generate` in a loop), the figure
   the service is held to.
2. The service in its own process (`hetgan serve` on a free 127.0.0.1 port): for each client
   count, that many concurrent clients each asking for n samples (npz) again and again for
   `--seconds` (at most `--max-requests` in all): img/s, requests/s, latency p50/p99, errors.
   Target: at 32 clients >= 70 % of the offline img/s, with no errors.
3. Overload: a service with a small queue (`--max-queue 8`) and 4x as many clients as in the
   largest load above: the excess must get 503 within 50 ms (p99 of the 503s) while the rest
   get 200.
4. Soak: `--soak-requests` requests (default 10,000) from 8 clients; the server's resident set
   (VmRSS) after the first 1,000 against after all of them: within 10 %.

Clients and server share this machine's cores, so the clients' own work (HTTP, npz decoding)
is taken from the server: the ratio is a floor for a server with cores of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import torch

import hetgan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`hetgan serve` in a child process on a free loopback port."""

    def __init__(self, source: str, backend: str | None, *flags: str) -> None:
        self.port = free_port()
        cmd = [sys.executable, "-m", "hetgan", "serve", "--artifact", source, "--port", str(self.port), *flags]
        if backend:
            cmd += ["--backend", backend]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited: {self.proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("the server did not become ready within 120 s")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def offline_img_per_s(source: str, backend: str | None, seconds: float, batch: int = 64) -> float:
    G = hetgan.load_generator(source, backend=backend)
    z = torch.randn(batch, G.z_dim)
    for _ in range(5):
        G.generate(z)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        G.generate(z)
        calls += 1
    return calls * batch / (time.perf_counter() - start)


async def load(url: str, clients: int, n: int, seconds: float, max_requests: int) -> dict:
    """`clients` concurrent clients asking for n samples each, until `seconds` or `max_requests`."""
    latencies: list[float] = []
    statuses: dict[int | str, int] = {}
    sent = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(http: httpx.AsyncClient, index: int) -> None:
        nonlocal sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            seed = sent  # every request another seed
            start = time.perf_counter()
            try:
                response = await http.post("/v1/generate", json={"n": n, "seed": seed, "format": "npz"})
                status = response.status_code
                if status == 200:
                    assert np.load(io.BytesIO(response.content))["images"].shape[0] == n
            except httpx.TransportError as e:
                status = type(e).__name__
            latencies.append((time.perf_counter() - start, status))
            statuses[status] = statuses.get(status, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http, i) for i in range(clients)))
        elapsed = time.perf_counter() - start
    ok = [t for t, s in latencies if s == 200]
    refused = [t for t, s in latencies if s == 503]
    return {
        "clients": clients,
        "requests": len(latencies),
        "statuses": statuses,
        "img_per_s": n * len(ok) / elapsed,
        "req_per_s": len(latencies) / elapsed,
        "p50_ms": 1000 * statistics.median(ok) if ok else None,
        "p99_ms": 1000 * float(np.percentile(ok, 99)) if ok else None,
        "p99_503_ms": 1000 * float(np.percentile(refused, 99)) if refused else None,
    }


def line(r: dict) -> str:
    p = f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms" if r["p50_ms"] is not None else "no 200s"
    return (
        f"{r['clients']:>3} clients: {r['img_per_s']:8.0f} img/s, {r['req_per_s']:6.1f} req/s, {p}, "
        f"{r['requests']} requests, statuses {r['statuses']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run")
    source.add_argument("--artifact")
    parser.add_argument("--backend", default="openvino", help="torch, onnxruntime or openvino (default openvino)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count")
    parser.add_argument("--max-requests", type=int, default=20_000, help="per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--soak-requests", type=int, default=10_000)
    args = parser.parse_args()
    src = args.run or args.artifact
    backend = None if args.backend == "torch" and not src.endswith((".onnx", ".xml")) else args.backend

    offline = offline_img_per_s(src, backend, seconds=max(args.seconds / 2, 1))
    print(f"offline {args.backend} at batch 64: {offline:.0f} img/s (this process, {os.cpu_count()} cores)")
    server = Server(src, backend, "--max-batch", "64", "--max-wait-ms", "5", "--max-n", str(max(args.n, 64)))
    try:
        results = [asyncio.run(load(server.url, c, args.n, args.seconds, args.max_requests)) for c in args.clients]
        for r in results:
            print(line(r))
        top = results[-1]
        ratio = top["img_per_s"] / offline
        errors = sum(v for k, v in top["statuses"].items() if k != 200)
        verdict = "met" if ratio >= 0.7 and errors == 0 else "NOT MET"
        print(f"at {top['clients']} clients: {ratio:.2f} of offline img/s (target 0.70, no errors): {verdict}")

        soak_first = asyncio.run(load(server.url, 8, args.n, 600, 1000))
        rss_start = server.rss_mib()
        soak = asyncio.run(load(server.url, 8, args.n, 600, args.soak_requests - 1000))
        rss_end = server.rss_mib()
        grew = 100 * (rss_end - rss_start) / rss_start
        total = soak_first["requests"] + soak["requests"]
        print(
            f"soak: {total} requests, statuses {soak['statuses']}; server RSS {rss_start:.0f} MiB after 1000, "
            f"{rss_end:.0f} MiB after {total} ({grew:+.1f} %, target within 10 %): "
            f"{'met' if abs(grew) <= 10 else 'NOT MET'}"
        )
    finally:
        server.stop()

    overloaded = Server(src, backend, "--max-batch", "64", "--max-queue", "8", "--max-n", str(max(args.n, 64)))
    try:
        clients = 4 * max(args.clients)
        r = asyncio.run(load(overloaded.url, clients, args.n, args.seconds, args.max_requests))
        print(f"overload ({clients} clients, --max-queue 8): " + line(r))
        fast = r["p99_503_ms"] is not None and r["p99_503_ms"] <= 50
        others = {k: v for k, v in r["statuses"].items() if k not in (200, 503)}
        p99 = f"{r['p99_503_ms']:.1f} ms" if r["p99_503_ms"] is not None else "- (none refused)"
        print(
            f"  503s: {r['statuses'].get(503, 0)}, p99 {p99} (target <= 50 ms, and only 200/503): "
            f"{'met' if fast and not others else 'NOT MET'}"
        )
    finally:
        overloaded.stop()


if __name__ == "__main__":
    main()
