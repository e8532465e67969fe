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


def test_every_picture_is_small_used_and_made_by_the_script():
    """The docs' pictures (docs/images, made by scripts/make_figures.py) stay small, each is shown
    on some page or the README, and each name is one the script makes."""
    images = sorted((ROOT / "docs" / "images").glob("*.png"))
    assert images, "no pictures in docs/images: run python3 scripts/make_figures.py"
    pages = "".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    script = (ROOT / "scripts" / "make_figures.py").read_text()
    for image in images:
        assert image.stat().st_size <= 200 * 1024, f"{image.name}: over 200 KB"
        assert f"images/{image.name}" in pages, f"{image.name}: shown on no page"
        assert f'"{image.stem}"' in script, f"{image.name}: not one scripts/make_figures.py makes"
    for shown in re.findall(r"images/([\w.-]+\.png)", pages):
        assert (ROOT / "docs" / "images" / shown).exists(), f"a page shows images/{shown}, which is missing"
