"""Benchmarks: run by hand (``python -m benchmarks.featurize``), never as timed tests."""
