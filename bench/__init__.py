"""Benchmarks: run on demand (``python -m bench.<name>``), each printing its figures with the machine's size."""
