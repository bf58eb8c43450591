"""Benchmarks of the stream service against reference servers: ``python -m bench.run`` (see BENCHMARKS.md)."""
