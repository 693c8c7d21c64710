"""The pipeline steps, each a plain function over local directories, and ``STEPS``: the one table of the step
graph that the pipeline, the command line, the device check and the orchestrator faces derive theirs from.

Every step module defines:

- ``NAME`` and ``INPUTS``: its name as the CLI and orchestrators spell it (``"collect-stats"``) and the names of
  the input artifacts it consumes (``("model", "calibration")``), both taken from its ``STEPS`` entry;
- ``config_section(cfg) -> dict``: the part of the PipelineConfig that affects its result (this, the
  ptqflow version and the input artifacts' digests form the cache key; its ``STEPS`` entry's ``config_reads``
  says which keys that is, for the command line, and tests/test_cli.py checks the two agree);
- ``run(inputs: dict[str, Path], out: Path, cfg: PipelineConfig) -> Manifest``: does the work, writes its
  files into ``out`` and calls ``ptqflow.artifacts.manifest.write_manifest`` last.

Steps know nothing about URIs, S3 or orchestrators: ``ptqflow.artifacts`` stages inputs in and outputs out,
and decides whether a step can be skipped because an identical run already finished.

This module imports no step module (``load_step`` does, on demand), no onnx and no orchestrator package.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StepSpec:
    """One step of the pipeline.

    ``output``: the name of the artifact it produces, which later steps list in their ``inputs``.
    ``accelerated``: it runs models, on the configured execution device (``device``: cpu, cuda, npu); the
    others only move bytes or convert, and run on the CPU whatever the device.
    ``optional``: it runs after the others only when configured (publish: when ``registry`` is set).
    ``config_reads``: the config keys its config_section reads: dotted keys, where a section covers every field
    under it, and, after "!", keys under those that it leaves out. ``ptqflow <step>`` offers the typed flags of
    these keys only (``--set`` reaches any key).
    """

    name: str
    module: str
    inputs: tuple[str, ...]
    output: str
    accelerated: bool
    optional: bool
    config_reads: tuple[str, ...]


# Pipeline order; ``ptqflow run`` chains the non-optional steps in this order, then the optional ones when
# configured. The input and output names are the artifact contract of DESIGN.md.
STEPS: tuple[StepSpec, ...] = (
    StepSpec("fetch-model", "ptqflow.pipeline.steps.fetch_model", inputs=(), output="model",
             accelerated=False, optional=False, config_reads=("model", "model_sha256", "conversion")),
    StepSpec("build-calibration", "ptqflow.pipeline.steps.build_calibration", inputs=("model",), output="calibration",
             accelerated=False, optional=False, config_reads=("data", "quantization.subset_size")),
    # the bias-correction, mixed-precision and range-search knobs that only matter when statistics are applied (quantize) are
    # left out
    StepSpec("collect-stats", "ptqflow.pipeline.steps.collect_stats", inputs=("model", "calibration"), output="statistics",
             accelerated=True, optional=False,
             config_reads=("quantization", "device", "!quantization.advanced.bias_correction_subset_size",
                           "!quantization.advanced.bias_correction_threshold",
                           "!quantization.advanced.bias_correction_fallback",
                           "!quantization.advanced.bias_correction_fallback_samples",
                           "!quantization.advanced.bias_correction_guard_samples",
                           "!quantization.advanced.bias_correction_guard_samples_no_softmax",
                           "!quantization.advanced.bias_correction_guard_tie_weight",
                           "!quantization.advanced.safeguard_mixed_precision",
                           "!quantization.advanced.mixed_precision_samples",
                           "!quantization.advanced.mixed_precision_max_float_share",
                           "!quantization.advanced.mixed_precision_min_share",
                           "!quantization.advanced.mixed_precision_target_error",
                           "!quantization.advanced.mixed_precision_max_evals",
                           "!quantization.advanced.range_search",
                           "!quantization.advanced.range_search_samples")),
    StepSpec("quantize", "ptqflow.pipeline.steps.quantize", inputs=("model", "calibration", "statistics"), output="quantized",
             accelerated=True, optional=False, config_reads=("quantization", "device")),
    # validate reads the statistics, and export-ir the report (validate's accuracy-controlled model), only with
    # validation.accuracy_control enabled (inputs_for)
    StepSpec("validate", "ptqflow.pipeline.steps.validate", inputs=("model", "quantized", "calibration", "statistics"),
             output="report",
             accelerated=True, optional=False,
             config_reads=("validation", "device", "quantization.target_runtime", "quantization.quant_format",
                           "quantization.static")),
    StepSpec("export-ir", "ptqflow.pipeline.steps.export_ir", inputs=("quantized", "model", "calibration", "report"),
             output="ir",
             accelerated=False, optional=False, config_reads=("export",)),
    StepSpec("publish", "ptqflow.pipeline.steps.publish", inputs=("model", "quantized", "report", "ir"), output="registration",
             accelerated=False, optional=True, config_reads=("registry",)),
)

SPECS: dict[str, StepSpec] = {s.name: s for s in STEPS}

# Derived views of STEPS (names other modules and tests import). STEP_MODULES and OPTIONAL_STEPS are what
# ``load_step`` resolves names through, so a test may point a step at a stand-in module by editing them.
STEP_MODULES: dict[str, str] = {s.name: s.module for s in STEPS if not s.optional}
OPTIONAL_STEPS: dict[str, str] = {s.name: s.module for s in STEPS if s.optional}
CONFIG_READS: dict[str, tuple[str, ...]] = {s.name: s.config_reads for s in STEPS}
# Which step produces each named input artifact (the optional steps' outputs are no step's input).
PRODUCERS: dict[str, str] = {s.output: s.name for s in STEPS if not s.optional}
ACCELERATED_STEPS: frozenset[str] = frozenset(s.name for s in STEPS if s.accelerated)


def spec(name: str) -> StepSpec:
    """The STEPS entry of step ``name``; ValueError naming the valid names otherwise."""
    if name not in SPECS:
        raise ValueError(f"unknown step {name!r}; steps: {', '.join(SPECS)}")
    return SPECS[name]


# Inputs that only validation.accuracy_control reads: validate quantizes again from the statistics, and export-ir
# takes the INT8 model validate may publish inside its report artifact.
ACCURACY_CONTROL_INPUTS: dict[str, str] = {"validate": "statistics", "export-ir": "report"}


def inputs_for(name: str, cfg) -> tuple[str, ...]:
    """The input artifacts step ``name`` reads with ``cfg``: its ``inputs``, except the statistics for dynamic
    quantization (``quantization.static: false``), which needs no calibration statistics, and the inputs of
    ``ACCURACY_CONTROL_INPUTS`` unless ``validation.accuracy_control.enabled``."""
    names = spec(name).inputs
    if not cfg.quantization.static:
        names = tuple(i for i in names if i != "statistics")
    if name in ACCURACY_CONTROL_INPUTS and not cfg.validation.accuracy_control.enabled:
        names = tuple(i for i in names if i != ACCURACY_CONTROL_INPUTS[name])
    return names


def skipped(name: str, cfg) -> bool:
    """True when ``ptqflow run`` skips step ``name`` for ``cfg``: collect-stats for dynamic quantization;
    export-ir for the QOperator format, which OpenVINO cannot read (QLinearConv with per-channel weights)."""
    if name == "collect-stats":
        return not cfg.quantization.static
    return name == "export-ir" and cfg.quantization.quant_format.value == "qoperator"


def reads(step: str, key: str) -> bool:
    """True when ``step``'s config_section reads the dotted config ``key`` (per its ``config_reads``)."""
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
