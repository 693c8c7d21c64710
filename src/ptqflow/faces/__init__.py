"""Shared helpers for ptqflow's orchestrator faces (Airflow DAG in dags/, Kubeflow components in components/).

The DAG and component files stay thin: step wiring, parameters, images and placement live here so both
faces agree. Nothing in this package imports Airflow or KFP at module level except the face modules
named after them (``airflow_face``, ``kfp_face``).
"""

# Step order and each step's named input artifacts (the artifact contract of DESIGN.md).
STEP_INPUTS: dict[str, tuple[str, ...]] = {
    "fetch-model": (),
    "build-calibration": ("model",),
    "collect-stats": ("model", "calibration"),
    "quantize": ("model", "calibration", "statistics"),
    "validate": ("model", "quantized", "calibration"),
    "export-ir": ("quantized", "model", "calibration"),
}

# Steps added after export-ir when configured (publish: when the run's config has a ``registry`` section).
OPTIONAL_STEP_INPUTS: dict[str, tuple[str, ...]] = {"publish": ("model", "quantized", "report", "ir")}

# Which step produces each input artifact name.
PRODUCERS = {"model": "fetch-model", "calibration": "build-calibration", "statistics": "collect-stats",
             "quantized": "quantize", "report": "validate", "ir": "export-ir"}


def step_output_uri(output_prefix: str, step: str) -> str:
    """Where ``step`` writes its artifact under the run's output prefix (same layout as ``ptqflow run``)."""
    return f"{output_prefix.rstrip('/')}/{step}"


def step_input_uris(output_prefix: str, step: str) -> dict[str, str]:
    """{input name: producer's output URI} for ``step``."""
    inputs = STEP_INPUTS[step] if step in STEP_INPUTS else OPTIONAL_STEP_INPUTS[step]
    return {name: step_output_uri(output_prefix, PRODUCERS[name]) for name in inputs}
