"""ptqflow.artifacts."""
