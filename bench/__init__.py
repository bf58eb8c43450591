"""Benchmarks of BENCHMARKS.md: ``python -m bench.run`` (sections 1-4), ``python -m bench.ingest`` (section 5)."""
