"""Shared helpers for ptqflow's orchestrator faces (Airflow DAG in dags/, Kubeflow components in components/).

The DAG and component files stay thin: step wiring, parameters, images and placement live here so both
faces agree. Nothing in this package imports Airflow or KFP at module level except the face modules
named after them (``airflow_face``, ``kfp_face``).
"""

from ptqflow.errors import ConfigError
from ptqflow.pipeline.steps import PRODUCERS, STEPS

# Derived from ptqflow.pipeline.steps.STEPS (the one table of the step graph): step order and each step's named input
# artifacts, the steps added after export-ir when configured (publish: when the run's config has a ``registry``
# section), and (PRODUCERS, re-exported) which step produces each input artifact name.
STEP_INPUTS: dict[str, tuple[str, ...]] = {s.name: s.inputs for s in STEPS if not s.optional}
OPTIONAL_STEP_INPUTS: dict[str, tuple[str, ...]] = {s.name: s.inputs for s in STEPS if s.optional}
__all__ = ["MERGE_STEP", "OPTIONAL_STEP_INPUTS", "PRODUCERS", "SHARDED_STEP", "STEP_INPUTS", "parse_shard",
           "shard_labels", "shard_name", "shard_output_uri", "shards_uri", "step_input_uris", "step_output_uri"]

# The statistics fan-out (run parameter ``statistics_shards``): collect-stats runs once per shard of the calibration
# split (``--shard I/N``) and merge-stats writes, from their partials, what one collect-stats would have written.
SHARDED_STEP = "collect-stats"
MERGE_STEP = "merge-stats"


def step_output_uri(output_prefix: str, step: str) -> str:
    """Where ``step`` writes its artifact under the run's output prefix (same layout as ``ptqflow run``)."""
    return f"{output_prefix.rstrip('/')}/{step}"


def step_input_uris(output_prefix: str, step: str) -> dict[str, str]:
    """{input name: producer's output URI} for ``step``."""
    inputs = STEP_INPUTS[step] if step in STEP_INPUTS else OPTIONAL_STEP_INPUTS[step]
    return {name: step_output_uri(output_prefix, PRODUCERS[name]) for name in inputs}


def shards_uri(output_prefix: str, step: str) -> str:
    """The directory of ``step``'s shard outputs: ``<output>/<step>-shards``, beside ``<output>/<step>`` (the
    merge's output, whose whole directory a rerun replaces) rather than in it."""
    return f"{output_prefix.rstrip('/')}/{step}-shards"


def shard_name(shard: tuple[int, int]) -> str:
    """``"<i>-of-<n>"``: shard (i, n)'s directory name under ``shards_uri`` (also a valid Kubernetes label)."""
    return f"{shard[0]}-of-{shard[1]}"


def shard_output_uri(output_prefix: str, step: str, shard: tuple[int, int]) -> str:
    """Where shard (i, n) of ``step`` writes its partial artifact: ``<output>/<step>-shards/<i>-of-<n>``."""
    return f"{shards_uri(output_prefix, step)}/{shard_name(shard)}"


def shard_labels(count) -> list[str]:
    """``["0/N", ..., "N-1/N"]`` for ``count`` = N > 1 shards, ``[]`` for 1 (one unsharded collect-stats);
    ConfigError unless ``count`` is an integer >= 1."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"statistics_shards: expected an integer >= 1, got {count!r}")
    return [f"{i}/{count}" for i in range(count)] if count > 1 else []


def parse_shard(label: str) -> tuple[int, int] | None:
    """``"I/N"`` -> (I, N); ``""`` -> None (the whole split); ConfigError for anything else."""
    if label == "":
        return None
    try:
        i, n = (int(part) for part in label.split("/"))
    except ValueError:
        raise ConfigError(f"shard {label!r}: expected I/N, e.g. 0/4") from None
    if not 0 <= i < n:
        raise ConfigError(f"shard {label!r}: expected 0 <= I < N")
    return i, n
