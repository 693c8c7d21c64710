"""ptqflow.runtime.sessions: inference sessions (onnxruntime, explicit device) and OpenVINO helpers."""
