"""What the ingest and stream services share: settings, the reading model, topics, JetStream setup, logging."""
