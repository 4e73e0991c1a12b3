"""Model bundles (format, manifest schema, loading and prediction) and the model registry."""
