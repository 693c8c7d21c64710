"""ptqflow.data."""
