"""The ingest service: devices POST readings, answered only after JetStream stored them."""
