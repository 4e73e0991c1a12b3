"""What was predicted, kept: the append-only audit trail and production-batch summaries."""
