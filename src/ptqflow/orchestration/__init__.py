"""Shared helpers for ptqflow's orchestrator faces (Airflow DAG in dags/, Kubeflow components in components/).

The DAG and component files stay thin: step wiring, parameters, images and placement live here so both
faces agree. Nothing in this package imports Airflow or KFP at module level except the face modules
named after them (``airflow_face``, ``kfp_face``).
"""

from ptqflow.pipeline.steps import PRODUCERS, STEPS

# Derived from ptqflow.pipeline.steps.STEPS (the one table of the step graph): step order and each step's named input
# artifacts, the steps added after export-ir when configured (publish: when the run's config has a ``registry``
# section), and (PRODUCERS, re-exported) which step produces each input artifact name.
STEP_INPUTS: dict[str, tuple[str, ...]] = {s.name: s.inputs for s in STEPS if not s.optional}
OPTIONAL_STEP_INPUTS: dict[str, tuple[str, ...]] = {s.name: s.inputs for s in STEPS if s.optional}
__all__ = ["OPTIONAL_STEP_INPUTS", "PRODUCERS", "STEP_INPUTS", "step_input_uris", "step_output_uri"]


def step_output_uri(output_prefix: str, step: str) -> str:
    """Where ``step`` writes its artifact under the run's output prefix (same layout as ``ptqflow run``)."""
    return f"{output_prefix.rstrip('/')}/{step}"


def step_input_uris(output_prefix: str, step: str) -> dict[str, str]:
    """{input name: producer's output URI} for ``step``."""
    inputs = STEP_INPUTS[step] if step in STEP_INPUTS else OPTIONAL_STEP_INPUTS[step]
    return {name: step_output_uri(output_prefix, PRODUCERS[name]) for name in inputs}
