"""ptqflow.graph."""
