"""The docs site builds strictly (no broken link, no page left out of the navigation, no
docstring the API reference cannot read) and covers every command and endpoint."""

import os
import re
import subprocess
import sys

from hetgan.cli import build_parser, subparsers
from hetgan.serving.app import ENDPOINTS
from tests.conftest import ROOT


def test_the_docs_site_builds_strictly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("train", "load_generator", "evaluate", "export", "quantize", "compress", "serve", "bench", "tune"):
        assert 'id="hetgan.' in api and re.search(rf'id="hetgan\.[\w.]*\b{name}"', api), name


def test_every_command_has_its_row_and_page():
    table = (ROOT / "docs" / "cli.md").read_text()
    for command in subparsers(build_parser()):
        row = next((line for line in table.splitlines() if line.startswith(f"| `hetgan {command}")), None)
        assert row and re.search(r"\]\(\w[\w-]*\.md", row), f"hetgan {command}: no row linking a page in docs/cli.md"


def test_every_endpoint_is_documented_with_an_example():
    page = (ROOT / "docs" / "serving.md").read_text()
    for path in ENDPOINTS:
        assert f"`GET {path}`" in page or f"`POST {path}`" in page or f"{path}`" in page, path
        if path != "/":
            assert f"http://127.0.0.1:8000{path}" in page, f"{path}: no example request"
