"""What the slow end-to-end tests run: the S3 bucket they use and the base config for the tiny model."""

BUCKET = "ptqflow-rest"
DAG_ID = "ptqflow_quantize"
# The base config of every run on the tiny model (small subsets, a lenient gate, no speed threshold).
TINY_CONFIG = {"quantization": {"subset_size": 16},
               "data": {"validation_size": 8, "preprocess": {"method": "none"}},
               "validation": {"latency_iterations": 2,
                              "gate": {"min_speedup": None, "max_accuracy_drop": None, "min_cosine": 0.5}}}
