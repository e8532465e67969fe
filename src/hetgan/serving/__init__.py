"""`hetgan serve`: a bounded HTTP service for a trained generator, with dynamic batching and a
web page (`app.py`, `batcher.py`, `page.html`), on any backend `hetgan.load_generator` has.

Its packages are the `serve` extra: pip install 'hetgan[serve]'.
"""

from __future__ import annotations

import importlib

from hetgan.errors import HetganError

INSTALL = "pip install 'hetgan[serve]'"


def require(module: str):
    """Import a package of the serve extra, or say which install brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise HetganError(
            f"hetgan serve needs the package {module.split('.')[0]!r}, which is not installed here ({e}); install "
            f"the serve extra: {INSTALL}"
        ) from None
