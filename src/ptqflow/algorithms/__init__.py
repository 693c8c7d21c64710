"""ptqflow.algorithms."""
