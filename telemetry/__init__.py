"""The ``telemetry`` command: run the platform locally, run one service, simulate devices, tail a stream."""
