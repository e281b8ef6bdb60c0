"""Benchmarks: run each module as a script or with `uv run python -m bench.NAME`."""
