"""Evaluation: feature networks (evalnet.py) and metrics in their feature space (metrics.py)."""
