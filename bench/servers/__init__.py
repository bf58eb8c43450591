"""Reference servers for the fan-out and memory benchmarks, each a standalone script (``python -m``)."""
