"""The model-registry hook's KFP trigger through the real KFP SDK (``kfp.Client``) against a stand-in of the KFP
API on loopback (tests/kfp/recording_kfp.py) that checks a run's parameters against the compiled pipeline's, as
the backend does: the hook's pipeline settings reach the run, the shard counts of the fan-outs included."""

from __future__ import annotations

from pathlib import Path

from recording_kfp import pipeline_parameters, recording_kfp
from ptqflow.orchestration import FAN_OUTS
from ptqflow.registry.hooks.config import HookConfig
from ptqflow.registry.hooks.core import HookCore
from ptqflow.registry.hooks.orchestrators import KfpOrchestrator

PACKAGE = Path(__file__).resolve().parents[2] / "components" / "ptqflow_pipeline.yaml"


class _Version:
    """A registry model version as HookCore.run_conf reads it (name, version, tags)."""

    def __init__(self, name: str, version: str, tags: dict):
        self.name, self.version, self.tags = name, version, tags


def test_kfp_trigger_carries_the_shard_counts():
    assert {f.param for f in FAN_OUTS.values()} <= set(pipeline_parameters(PACKAGE))
    with recording_kfp("ptqflow-quantize", PACKAGE) as (host, rec):
        cfg = HookConfig.model_validate({
            "orchestrator": "kfp", "kfp": {"host": host, "pipeline_name": "ptqflow-quantize"},
            "pipeline": {"data": "s3://bucket/calib/", "output": "s3://bucket/out/{name}/{version}",
                         "statistics_shards": 4, "validation_shards": 3,
                         "config": {"quantization": {"subset_size": 16}}}})
        orchestrator = KfpOrchestrator(cfg.kfp)
        conf = HookCore(cfg, orchestrator).run_conf(_Version("resnet", "7", {}))
        run_id = orchestrator.trigger("ptqflow-hook__resnet__v7", conf)
        # Left unset, the shard counts are the faces' default: one task each.
        default = HookConfig.model_validate({**cfg.model_dump(), "pipeline": {"output": "s3://bucket/o", "data": "d"}})
        orchestrator.trigger("default-shards", HookCore(default, orchestrator).run_conf(_Version("resnet", "8", {})))
    assert run_id == "run-1" and len(rec.runs) == 2
    run = rec.runs[0]
    assert run["display_name"] == "ptqflow-hook__resnet__v7"
    params = run["runtime_config"]["parameters"]
    assert params["statistics_shards"] == 4 and params["validation_shards"] == 3
    assert params["model"] == "models:/resnet/7" and params["output"] == "s3://bucket/out/resnet/7"
    assert params["base_config"] == '{"quantization": {"subset_size": 16}, "registry": {"target_name": "resnet-int8", ' \
                                    '"experiment": "ptqflow"}}'
    defaults = rec.runs[1]["runtime_config"]["parameters"]
    assert (defaults["statistics_shards"], defaults["validation_shards"]) == (1, 1)
