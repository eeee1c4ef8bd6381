"""The benchmark suite: `python -m perf` (see run.py)."""
