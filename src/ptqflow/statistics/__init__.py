"""ptqflow.statistics."""
