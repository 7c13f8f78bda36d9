"""Benchmarks, each run as `python -m bench.NAME`; the last line printed is one JSON object."""
