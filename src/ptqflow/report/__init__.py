"""ptqflow.report."""
