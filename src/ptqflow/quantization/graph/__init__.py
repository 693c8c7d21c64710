"""ptqflow.quantization.graph."""
