"""Slow: a real Airflow (api-server, scheduler, dag-processor; LocalExecutor on SQLite) on loopback runs the
ptqflow DAG triggered through the REST API with conf, every artifact on an S3 server on loopback (moto), with
statistics collected in 3 shards (mapped tasks the executor runs side by side) and merged.

The task states and durations are printed and written to PTQFLOW_AIRFLOW_REST_RUN_REPORT when it is set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tiny_run import BUCKET, DAG_ID, STEPS, TINY_CONFIG, task_table


def run_conf(output: str, **params) -> dict:
    """Run conf for the tiny model: flat parameters plus a nested base config."""
    return {"model": f"s3://{BUCKET}/in/model.onnx", "data": f"s3://{BUCKET}/in/data/", "output": output,
            "subset_size": 16, "min_cosine": 0.5, "config": TINY_CONFIG, **params}


@pytest.mark.slow
def test_rest_triggered_run_succeeds(rest_s3, airflow_rest):
    client, af = rest_s3[1], airflow_rest
    created = af.trigger(DAG_ID, run_conf(f"s3://{BUCKET}/runs/rest", statistics_shards=3, validation_shards=2))
    assert created["state"] == "queued" and created["triggered_by"] == "rest_api"
    assert created["conf"]["output"] == f"s3://{BUCKET}/runs/rest"
    run = af.wait_run(DAG_ID, created["dag_run_id"])
    tis = af.task_instances(DAG_ID, created["dag_run_id"])
    table = task_table(run, tis)
    print(table)
    report = os.environ.get("PTQFLOW_AIRFLOW_REST_RUN_REPORT")
    if report:
        Path(report).write_text(table + "\n")
    assert run["state"] == "success", table + "\n" + af.log_tails()
    states = {ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): ti["state"] for ti in tis}
    # No registry section in the conf: the publish step's task is skipped. Statistics in 3 shards and validation in
    # 2: the gates skip the one-task collect_stats and validate; the mapped shard tasks and the merges run. Static
    # quantization: statistics_needed lets the statistics tasks run.
    assert states == {**{s: "success" for s in STEPS}, "collect_stats": "skipped", "validate": "skipped",
                      "statistics_needed": "success",
                      "publish": "success", "publish_registry": "skipped",
                      "statistics_unsharded": "success", "statistics_shards": "success",
                      **{f"collect_stats_shard[{i}]": "success" for i in range(3)}, "merge_stats": "success",
                      "validation_unsharded": "success", "validation_shards": "success",
                      **{f"validate_shard[{i}]": "success" for i in range(2)}, "merge_validation": "success"}, table
    assert all(ti["try_number"] <= 1 for ti in tis), table
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/rest/")["Contents"]}
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert f"runs/rest/{step}/manifest.json" in keys
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key="runs/rest/export-ir/manifest.json")["Body"].read())
    assert manifest["metrics"]["fake_quantize"] > 0
    merged = json.loads(client.get_object(Bucket=BUCKET, Key="runs/rest/collect-stats/manifest.json")["Body"].read())
    assert merged["step"] == "merge-stats" and merged["metrics"]["shards"] == 3
    assert {f"runs/rest/collect-stats-shards/{i}-of-3/manifest.json" for i in range(3)} <= keys
    merged = json.loads(client.get_object(Bucket=BUCKET, Key="runs/rest/validate/manifest.json")["Body"].read())
    assert merged["step"] == "merge-validation" and merged["extra"]["shards"] == 2
    assert {f"runs/rest/validate-shards/{i}-of-2/manifest.json" for i in range(2)} <= keys
