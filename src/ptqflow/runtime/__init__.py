"""ptqflow.runtime: inference sessions (onnxruntime, explicit device), OpenVINO helpers, and model files of any
size (``model_files``: the one place a ModelProto is written to disk, external data over 2 GB)."""
