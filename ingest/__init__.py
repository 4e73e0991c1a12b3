"""nirwatch ingest service."""
