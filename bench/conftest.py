"""Benchmarks: inputs are built outside the timed region; names are unique.

Run with:  .venv/bin/pytest bench/ --benchmark-enable --benchmark-columns=median,iqr,ops
"""
