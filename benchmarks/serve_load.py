"""Load on `hetgan serve`, over loopback only, bounded in requests and time; it stops by itself.

    python benchmarks/serve_load.py (--run RUN | --artifact FILE) [--backend openvino] [--seconds 10]
                                    [--clients 1 8 32] [--n 16] [--soak-requests 10000] [--threads N]
                                    [--streams S] [--nice K] [--overload-seconds 30]

The load comes from wrk (Debian's `wrk`, C: a client's work per request is microseconds, so the
server gets the machine's cores; a Python client spent more CPU per request than the server),
driven by benchmarks/serve_load.lua: every request its own seed, responses counted by status.

1. Offline: the backend's img/s at batch 64 in this process (`generate` in a loop) on the threads
   the service gives it (`--threads`, default `hetgan serve`'s: every core), in one stream and in
   the service's `--streams` (as many loops at once), before the service runs and again after it:
   the best of these is the figure the service is held to.
2. The service in its own process (`hetgan serve` on a free 127.0.0.1 port): for each client
   count, that many connections each asking for n samples (npz) again and again for `--seconds`:
   img/s, requests/s, latency p50/p99, statuses. Target: at 32 clients >= 70 % of the offline
   img/s, with no errors. Over the largest load, where the time went: the event loop's CPU per
   request, the generator's calls (samples per call, and how much of its streams' time they
   filled, from /metrics) and how idle the machine was.
3. Overload: a fresh service (a queue of 64 pieces) under 16x the connections of the largest
   load above, each pausing between requests so that together they offer 4x the request rate
   that load was served at, for `--overload-seconds` (default 30), while a probe sends one
   request every 20 ms and times each answer: the excess must get 503 within 50 ms (p99 of the
   probe's 503s, ~300 of them; with the ~100 of a 10 s run the p99 was their slowest) and
   nothing but 200 or 503.
4. Soak: `--soak-requests` requests (default 10,000) on 8 connections; the server's resident set
   (VmRSS) after the first 1,000 against after all of them: within 10 %.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from prometheus_client.parser import text_string_to_metric_families

import hetgan
from hetgan.benchmarking.inference import img_per_s
from hetgan.deploy.runtimes import cpu_threads
from hetgan.fileio import write_json
from hetgan.serving.server import GENERATOR_NICE, serving_streams

LUA = Path(__file__).with_name("serve_load.lua")


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
        self.proc.kill()
        raise SystemExit("the server did not become ready within 120 s")

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) / 1024

    def event_loop_cpu_s(self) -> float:
        """CPU seconds (user + system) of the server's main thread, which runs uvicorn's event loop
        (HTTP, JSON, z, encoding); the runtime's threads are others."""
        fields = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> Counters:
        """The counters `Counters.since` turns into where a load's time went."""
        families = text_string_to_metric_families(httpx.get(self.url + "/metrics", timeout=10).text)
        metrics = {s.name: s.value for family in families for s in family.samples if s.name in GENERATOR_METRICS}
        return Counters(self.event_loop_cpu_s(), metrics, machine_ticks(), time.monotonic())

    def stop(self) -> None:
        """SIGTERM (it finishes what it accepted), then SIGKILL if it has not gone in 60 s: the
        benchmark never leaves a server behind."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            print("the server did not stop within 60 s of SIGTERM; killed", file=sys.stderr)


GENERATOR_METRICS = ("hetgan_batch_samples_count", "hetgan_batch_samples_sum", "hetgan_generate_seconds_sum")


def machine_ticks() -> tuple[int, int]:
    """(idle, all) CPU ticks of the whole machine since boot (/proc/stat; (0, 0) elsewhere)."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0, 0
    return ticks[3] + ticks[4], sum(ticks[:8])  # idle + iowait; guest time is inside user already


@dataclass
class Counters:
    """The server's event-loop CPU, its generator metrics and the machine's ticks at one moment;
    `since` an earlier one they are the difference."""

    loop_cpu_s: float
    metrics: dict[str, float]
    ticks: tuple[int, int]
    at: float

    def since(self, earlier: Counters) -> Counters:
        metrics = {k: v - earlier.metrics.get(k, 0.0) for k, v in self.metrics.items()}
        ticks = (self.ticks[0] - earlier.ticks[0], self.ticks[1] - earlier.ticks[1])
        return Counters(self.loop_cpu_s - earlier.loop_cpu_s, metrics, ticks, self.at - earlier.at)

    def figures(self, requests: int, streams: int) -> dict:
        """The event loop's CPU per request, the generator's calls and how busy its streams were,
        and how idle the machine was (None where /proc/stat could not be read): the same CPU shared
        by the HTTP side, the load generator and the generator, and the time none of them used."""
        calls = self.metrics.get("hetgan_batch_samples_count", 0.0)
        samples = self.metrics.get("hetgan_batch_samples_sum", 0.0)
        return {
            "loop_us_per_request": 1e6 * self.loop_cpu_s / max(requests, 1),
            "generator_calls": calls,
            "mean_samples_per_call": samples / max(calls, 1),
            "streams_busy": self.metrics.get("hetgan_generate_seconds_sum", 0.0) / max(self.at * streams, 1e-9),
            "machine_idle": self.ticks[0] / self.ticks[1] if self.ticks[1] else None,
        }

    def summary(self, requests: int, streams: int) -> str:
        """`figures` in words."""
        f = self.figures(requests, streams)
        idle = f"; the machine idle {100 * f['machine_idle']:.0f} %" if f["machine_idle"] is not None else ""
        return (
            f"the event loop (main thread) {f['loop_us_per_request']:.0f} us CPU per request; "
            f"{f['generator_calls']:.0f} generator calls of {f['mean_samples_per_call']:.0f} samples on average, "
            f"in them {100 * f['streams_busy']:.0f} % of its {streams} stream{'s' * (streams > 1)}' time{idle}"
        )


def offline_img_per_s(source: str, backend: str | None, seconds: float, threads: int, streams: int) -> float:
    """The backend's img/s at batch 64 in this process, `generate` in a loop in each of `streams`
    threads (the runtime loaded with as many streams, sharing `threads`)."""
    # The torch backend's pool (img_per_s splits it between the streams); load_generator sets the runtimes'.
    torch.set_num_threads(threads)
    G = hetgan.load_generator(source, backend=backend, threads=threads, streams=streams)
    return img_per_s(G, 64, seconds, warm=False, callers=streams)


def offline_best(source: str, backend: str | None, seconds: float, threads: int, streams: int) -> tuple[float, str]:
    """The best offline img/s at batch 64 on `threads` threads over one stream and `streams`, and
    which it was: the figure the service is held to."""
    tried = {
        f"{s} stream{'s' * (s > 1)}": offline_img_per_s(source, backend, seconds, threads, s) for s in {1, streams}
    }
    best = max(tried, key=tried.get)
    print("  offline " + ", ".join(f"{k}: {v:.0f} img/s" for k, v in tried.items()))
    return tried[best], best


def wrk(url: str, connections: int, seconds: float, n: int, pause_ms: int = 0) -> dict:
    """wrk on one thread with `connections` connections for `seconds`, each waiting `pause_ms`
    between requests; its statuses and latencies."""
    cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{max(seconds, 1):g}s", "-s", str(LUA), url]
    cmd += ["--", str(n), str(pause_ms)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    fields = dict(re.findall(r"(\w+)=(\d+)", out.split("RESULT", 1)[1]))
    statuses = {int(s): int(c) for s, c in re.findall(r"STATUS (\d+) (\d+)", out)}
    seconds_run = int(fields["duration_us"]) / 1e6
    return {
        "clients": connections,
        "requests": int(fields["requests"]),
        "statuses": statuses,
        "socket_errors": int(fields["socket_errors"]),
        "img_per_s": n * statuses.get(200, 0) / seconds_run,
        "req_per_s": int(fields["requests"]) / seconds_run,
        "p50_ms": int(fields["p50_us"]) / 1000,
        "p99_ms": int(fields["p99_us"]) / 1000,
    }


def line(r: dict) -> str:
    return (
        f"{r['clients']:>3} clients: {r['img_per_s']:8.0f} img/s, {r['req_per_s']:7.1f} req/s, "
        f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, {r['requests']} requests, "
        f"statuses {r['statuses']}, socket errors {r['socket_errors']}"
    )


def probe(url: str, n: int, stop: threading.Event, times: dict) -> None:
    """One request every 20 ms, timed, until `stop`: how fast the excess hears 503."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                status = client.post("/v1/generate", json={"n": n, "seed": 1, "format": "npz"}).status_code
            except httpx.TransportError as e:
                status = type(e).__name__
            times.setdefault(status, []).append(time.perf_counter() - start)
            time.sleep(0.02)


def soak(server: Server, args, served: int) -> dict:
    """`--soak-requests` more requests on 8 connections: the server's resident set before and after."""
    rss_start = server.rss_mib()
    runs, started = [], time.monotonic()
    while sum(r["requests"] for r in runs) < args.soak_requests - 1000 and time.monotonic() - started < 300:
        runs.append(wrk(server.url, 8, min(5, args.seconds), args.n))
    rss_end = server.rss_mib()
    grew = 100 * (rss_end - rss_start) / rss_start
    total = sum(r["requests"] for r in runs)
    statuses: dict[int, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    verdict = "met" if abs(grew) <= 10 else "NOT MET"
    print(
        f"soak: {total} more requests after {served}, statuses {statuses}; server RSS {rss_start:.0f} MiB "
        f"before, {rss_end:.0f} MiB after ({grew:+.1f} %, target within 10 %): {verdict}"
    )
    return {"requests": total, "statuses": statuses, "rss_mib": [rss_start, rss_end], "rss_growth_pct": grew}


def overload(src: str, backend: str | None, flags: tuple, top: dict, args) -> dict:
    """A fresh service under 4x the request rate `top` was served at, probed for how fast the
    excess hears 503."""
    # 4x overload: connections pausing so that together they offer 4x the request rate the
    # service sustained at the largest load (with no pause, every refused connection would ask
    # again at once: a flood rather than 4x).
    overloaded = Server(src, backend, *flags)
    try:
        # wrk waits for each answer, so a connection's cycle is its pause plus the latency: 16x the
        # connections of the largest load, each pausing for its share of 4x that load's rate.
        clients = 16 * max(args.clients)
        pause_ms = max(1, round(1000 * clients / (4 * top["req_per_s"]) - top["p50_ms"]))
        stop, times = threading.Event(), {}
        prober = threading.Thread(target=probe, args=(overloaded.url, args.n, stop, times))
        prober.start()
        try:
            r = wrk(overloaded.url, clients, args.overload_seconds, args.n, pause_ms)
        finally:
            stop.set()
            prober.join()
        print(
            f"overload ({clients} clients pausing {pause_ms} ms: {r['req_per_s'] / top['req_per_s']:.1f}x the rate "
            f"served above): " + line(r)
        )
        refused = sorted(times.get(503, []))
        p99 = 1000 * refused[min(len(refused) - 1, int(0.99 * len(refused)))] if refused else None
        others = {k: v for k, v in r["statuses"].items() if k not in (200, 503)}
        probe_line = {k: len(v) for k, v in times.items()}
        fast = p99 is not None and p99 <= 50
        shown = (
            f"{p99:.1f} ms (median {1000 * statistics.median(refused):.1f} ms, slowest {1000 * refused[-1]:.1f} ms)"
            if refused
            else "- (none refused)"
        )
        print(
            f"  probe: {probe_line}; its 503s answered in p99 {shown} (target <= 50 ms, only 200/503 overall): "
            f"{'met' if fast and not others else 'NOT MET'}"
        )
        slowest = 1000 * refused[-1] if refused else None
        rate = r["req_per_s"] / top["req_per_s"]
        return {"load": r, "rate_over_served": rate, "probe": probe_line, "refused_p99_ms": p99, "slowest_ms": slowest}
    finally:
        overloaded.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run")
    source.add_argument("--artifact")
    parser.add_argument("--backend", default="openvino", help="torch, onnxruntime or openvino (default openvino)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--soak-requests", type=int, default=10_000)
    parser.add_argument(
        "--overload-seconds", type=float, default=30.0,
        help="how long the overload runs (default 30: ~300 probe answers, so that their p99 is not simply the slowest)",
    )  # fmt: skip
    parser.add_argument("--max-batch", type=int, default=256, help="the service's --max-batch (default 256)")
    parser.add_argument("--threads", type=int, help="the runtime's threads, served and offline (default: every core)")
    parser.add_argument("--streams", type=int, help="the service's --streams (default: serve's)")
    parser.add_argument("--nice", type=int, default=GENERATOR_NICE, help="the service's --nice (default: serve's)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH as JSON")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("this benchmark drives the load with wrk: apt-get install wrk")
    src = args.run or args.artifact
    backend = args.backend
    threads = args.threads or cpu_threads()
    streams = args.streams or serving_streams(threads)

    seconds = max(args.seconds / 2, 1)
    print(f"offline {backend} at batch 64 with {threads} threads (this process), before the service:")
    before = offline_best(src, backend, seconds, threads, streams)
    flags = ("--max-batch", str(args.max_batch), "--max-wait-ms", "2", "--max-n", str(max(args.n, 64)))
    flags += ("--threads", str(threads), "--streams", str(streams), "--nice", str(args.nice))
    server = Server(src, backend, *flags)
    try:
        results = [wrk(server.url, c, args.seconds, args.n) for c in args.clients[:-1]]
        before_top = server.snapshot()
        results.append(wrk(server.url, args.clients[-1], args.seconds, args.n))
        spent = server.snapshot().since(before_top)
        for r in results:
            print(line(r))
        top = results[-1]
        print(f"  where the time went at {top['clients']} clients: " + spent.summary(top["requests"], streams))
        soaked = soak(server, args, served=sum(r["requests"] for r in results))
    finally:
        server.stop()
    # This machine's speed drifts: the service is held to the better of the offline figures
    # taken before and after it ran.
    print("offline again, after the service:")
    offline, how = max(before, offline_best(src, backend, seconds, threads, streams))
    ratio = top["img_per_s"] / offline
    errors = top["socket_errors"] + sum(v for k, v in top["statuses"].items() if k != 200)
    verdict = "met" if ratio >= 0.7 and errors == 0 else "NOT MET"
    print(
        f"at {top['clients']} clients: {top['img_per_s']:.0f} img/s = {ratio:.2f} of the best offline img/s "
        f"({offline:.0f}, {how}, {threads} threads; target 0.70, no errors): {verdict}"
    )

    overloaded = overload(src, backend, flags, top, args)
    record = {"backend": backend, "threads": threads, "streams": streams, "offline": {"img_per_s": offline, "how": how}}
    record |= {"loads": results, "spent": spent.figures(top["requests"], streams), "ratio": ratio}
    write_json(args.json, record | {"soak": soaked, "overload": overloaded})


if __name__ == "__main__":
    main()
