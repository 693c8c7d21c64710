"""ptqflow.quantization.algorithms."""
