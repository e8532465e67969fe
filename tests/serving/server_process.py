"""`hetgan serve` as a real process on a free loopback port, for the tests that talk to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(source, *flags: str, env: dict | None = None, ready: bool = True, pretrained: bool = False):
    """`hetgan serve` started as a user would, on a free loopback port; stopped with SIGTERM.
    `source` is an artifact's path, or with `pretrained` a packaged generator's name."""
    port = free_port()
    what = ["--pretrained" if pretrained else "--artifact", str(source)]
    cmd = [sys.executable, "-m", "hetgan", "serve", *what, "--port", str(port), *flags]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        wait_for(client, "/readyz" if ready else "/healthz", proc)
        yield client, proc
    finally:
        client.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_for(client: httpx.Client, path: str, proc, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        with contextlib.suppress(httpx.TransportError):
            if client.get(path).status_code == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"{path} did not answer 200 within {seconds} s")
