"""Benchmarks (`make bench`): figures for the record, never timed tests. Run the scripts as
modules from the repository root (``python -m bench.run``) so they can import the shared
PostgreSQL harness in ``tests/support`` without touching ``sys.path``."""
