"""nirwatch inference service."""
