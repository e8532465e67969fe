"""hetgan's version: written into every checkpoint, artifact and exported model."""

__version__ = "0.1.0"
