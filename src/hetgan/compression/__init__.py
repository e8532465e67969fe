"""Compression: a smaller generator that keeps its teacher's quality.

- `prune.py`: structured pruning of G's channels (torch-pruning over the dependency graph).
- `student.py`: one student: pruned, then distilled from its teacher as an ordinary run.
- `search.py`: the smallest student that meets a time per call on a backend.
- `compress.py`: `hetgan.compress`, the one entry point over both.
"""
