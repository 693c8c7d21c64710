"""ptqflow.registry.client: the model-registry client and the hooks that start pipeline runs from it."""
