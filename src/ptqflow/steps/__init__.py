"""The six pipeline steps, each a plain function over local directories.

Every step module defines:

- ``NAME``: the step's name as the CLI and orchestrators spell it (``"collect-stats"``);
- ``INPUTS``: the names of the input artifacts it consumes (``("model", "calibration")``);
- ``config_section(cfg) -> dict``: the part of the PipelineConfig that affects its result (this, the
  ptqflow version and the input artifacts' digests form the cache key; ``CONFIG_READS`` below says which keys
  that is, for the command line, and tests/test_cli.py checks the two agree);
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


# The config keys each step's config_section reads: dotted keys, where a section covers every field under it,
# and, after "!", keys under those that it leaves out. ``ptqflow <step>`` offers the typed flags of these keys
# only (``--set`` reaches any key). Kept here rather than in the step modules so the CLI can build its parser
# without importing them.
CONFIG_READS: dict[str, tuple[str, ...]] = {
    "fetch-model": ("model", "model_sha256"),
    "build-calibration": ("data", "quantization.subset_size"),
    # the bias-correction knobs that only matter when statistics are applied (quantize) are left out
    "collect-stats": ("quantization", "device", "!quantization.advanced.bias_correction_subset_size",
                      "!quantization.advanced.bias_correction_threshold",
                      "!quantization.advanced.bias_correction_guard_samples"),
    "quantize": ("quantization", "device"),
    "validate": ("validation", "device"),
    "export-ir": ("export",),
    "publish": ("registry",),
}


def reads(step: str, key: str) -> bool:
    """True when ``step``'s config_section reads the dotted config ``key`` (per CONFIG_READS)."""
    def covers(entry: str) -> bool:
        return key == entry or key.startswith(entry + ".")

    entries = CONFIG_READS[step]
    return (any(covers(e) for e in entries if not e.startswith("!"))
            and not any(covers(e[1:]) for e in entries if e.startswith("!")))


def load_step(name: str):
    """The step module for a step name; ValueError naming the valid names otherwise."""
    import importlib

    modules = {**STEP_MODULES, **OPTIONAL_STEPS}
    if name not in modules:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(modules)}")
    return importlib.import_module(modules[name])
