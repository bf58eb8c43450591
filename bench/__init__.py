"""The benchmarks of bench/README.md: ``python -m bench.run`` (the stream service), ``python -m bench.ingest``."""
