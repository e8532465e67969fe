"""Plots of a run (plots.py) and its self-contained HTML report (html.py)."""
