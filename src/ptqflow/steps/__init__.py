"""The six pipeline steps, each a plain function over local directories.

Every step module defines:

- ``NAME``: the step's name as the CLI and orchestrators spell it (``"collect-stats"``);
- ``INPUTS``: the names of the input artifacts it consumes (``("model", "calibration")``);
- ``config_section(cfg) -> dict``: the part of the PipelineConfig that affects its result (this, the
  ptqflow version and the input artifacts' digests form the cache key);
- ``run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest``: does the work, writes its
  files into ``out`` and calls ``ptqflow.artifacts.manifest.write_manifest`` last.

Steps know nothing about URIs, S3 or orchestrators: ``ptqflow.artifacts`` stages inputs in and outputs out,
and decides whether a step can be skipped because an identical run already finished.
"""

# Pipeline order; ``ptqflow run`` chains them in this order.
STEP_MODULES = {
    "fetch-model": "ptqflow.steps.fetch_model",
    "build-calibration": "ptqflow.steps.build_calibration",
    "collect-stats": "ptqflow.steps.collect_stats",
    "quantize": "ptqflow.steps.quantize",
    "validate": "ptqflow.steps.validate",
    "export-ir": "ptqflow.steps.export_ir",
}

# Steps that run after the six when configured: publish (to a model registry) when ``registry`` is set.
OPTIONAL_STEPS = {
    "publish": "ptqflow.steps.publish",
}


def load_step(name: str):
    """The step module for a step name; ValueError naming the valid names otherwise."""
    import importlib

    modules = {**STEP_MODULES, **OPTIONAL_STEPS}
    if name not in modules:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(modules)}")
    return importlib.import_module(modules[name])
