"""What was predicted, kept: the append-only audit trail, production-batch summaries, and the
bounded join of predictions and spectra with their lab values by sample id."""
