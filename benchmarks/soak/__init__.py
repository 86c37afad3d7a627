"""The chaos soak of issue 32: `python -m benchmarks.soak --minutes N` (see __main__.py)."""
