"""Shared helpers for ptqflow's orchestrator faces (Airflow DAG in dags/, Kubeflow components in components/).

The DAG and component files stay thin: step wiring, parameters, images and placement live here so both
faces agree. Nothing in this package imports Airflow or KFP at module level except the face modules
named after them (``airflow_face``, ``kfp_face``).
"""

from dataclasses import dataclass

from ptqflow.errors import ConfigError
from ptqflow.pipeline.steps import PRODUCERS, STEPS

# Derived from ptqflow.pipeline.steps.STEPS (the one table of the step graph): step order and each step's named input
# artifacts, the steps added after export-ir when configured (publish: when the run's config has a ``registry``
# section), and (PRODUCERS, re-exported) which step produces each input artifact name.
STEP_INPUTS: dict[str, tuple[str, ...]] = {s.name: s.inputs for s in STEPS if not s.optional}
OPTIONAL_STEP_INPUTS: dict[str, tuple[str, ...]] = {s.name: s.inputs for s in STEPS if s.optional}
__all__ = ["AFTER", "CONDITIONAL", "FAN_OUTS", "MERGES", "FanOut", "OPTIONAL_STEP_INPUTS", "PRODUCERS", "STEP_INPUTS", "earlier_steps",
           "parse_shard",
           "shard_labels", "shard_name", "shard_output_uri", "shards_uri", "step_input_uris", "step_output_uri"]


@dataclass(frozen=True)
class FanOut:
    """A step both faces can run in shards: ``step`` once per shard of its split (``--shard I/N``), then ``merge``
    writes, from their partials, the artifact one ``step`` would have written (where later steps read it). The run
    parameter ``param`` is N; 1 (the default) runs ``step`` once, as it always ran."""

    step: str  # the sharded step ("collect-stats")
    merge: str  # the command merging its partials ("merge-stats")
    param: str  # the run parameter giving N ("statistics_shards"); also the name of the task listing the shards
    samples: str  # what is split, for descriptions ("calibration samples")

    @property
    def prefix(self) -> str:
        """The fan-out's name in task ids: "statistics" for statistics_shards."""
        return self.param.removesuffix("_shards")

    @property
    def description(self) -> str:
        """The run parameter's description (both faces)."""
        return (f"Run {self.step} in this many shards of the {self.samples}, one task (pod) each, then {self.merge}; "
                f"1: one {self.step} task.")


# The fan-outs, by sharded step: collect-stats over the calibration split (merge-stats writes the statistics, byte
# for byte those of one collect-stats) and validate over the validation split (merge-validation writes the report
# and decides the gate, as one validate would).
FAN_OUTS: dict[str, FanOut] = {f.step: f for f in (
    FanOut("collect-stats", "merge-stats", "statistics_shards", "calibration samples"),
    FanOut("validate", "merge-validation", "validation_shards", "validation samples"),
)}
MERGES: dict[str, FanOut] = {f.merge: f for f in FAN_OUTS.values()}
# The fan-out steps the faces skip when ``ptqflow run`` does (``pipeline.steps.skipped``): collect-stats for dynamic
# quantization (``quantization.static: false``). Each sits behind a gate task deciding it from the run's config.
CONDITIONAL: tuple[str, ...] = ("collect-stats",)
# Steps that run after another for order, not data: export only what passed the gate.
AFTER: dict[str, tuple[str, ...]] = {"export-ir": ("validate",)}


def earlier_steps(step: str) -> set[str]:
    """The steps ``step`` runs after: the producers of its inputs and those it waits for (``AFTER``)."""
    inputs = STEP_INPUTS[step] if step in STEP_INPUTS else OPTIONAL_STEP_INPUTS[step]
    return {PRODUCERS[name] for name in inputs} | set(AFTER.get(step, ()))


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


def shard_labels(count, param: str) -> list[str]:
    """``["0/N", ..., "N-1/N"]`` for ``count`` = N > 1 shards, ``[]`` for 1 (the step runs once, unsharded);
    ConfigError naming run parameter ``param`` unless ``count`` is an integer >= 1."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{param}: expected an integer >= 1, got {count!r}")
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
