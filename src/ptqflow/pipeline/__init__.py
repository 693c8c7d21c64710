"""ptqflow.pipeline.runner: the steps, the runner that stages and caches them, the device check, validation metrics and report."""
