"""nirwatch training service."""
