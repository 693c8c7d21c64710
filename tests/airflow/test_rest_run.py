"""Slow: a real Airflow (api-server, scheduler, dag-processor; LocalExecutor on SQLite) on loopback runs the
ptqflow DAG triggered through the REST API with conf, every artifact on an S3 server on loopback (moto).

The task states and durations are printed and written to PTQFLOW_AIRFLOW_REST_RUN_REPORT when it is set."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from tiny_run import BUCKET, DAG_ID, TINY_CONFIG
STEPS = ("fetch_model", "build_calibration", "collect_stats", "quantize", "validate", "export_ir")


def run_conf(output: str) -> dict:
    """Run conf for the tiny model: flat parameters plus a nested base config."""
    return {"model": f"s3://{BUCKET}/in/model.onnx", "data": f"s3://{BUCKET}/in/data/", "output": output,
            "subset_size": 16, "min_cosine": 0.5, "config": TINY_CONFIG}


def _seconds(ti: dict) -> float | None:
    if ti.get("duration") is not None:
        return round(float(ti["duration"]), 1)
    if ti.get("start_date") and ti.get("end_date"):
        return round((datetime.fromisoformat(ti["end_date"]) - datetime.fromisoformat(ti["start_date"])).total_seconds(), 1)
    return None


def task_table(run: dict, tis: list[dict]) -> str:
    """A plain-text table of the run's task states and durations."""
    lines = [f"dag_id={run['dag_id']} run_id={run['dag_run_id']} state={run['state']} "
             f"triggered_by={run.get('triggered_by')} start={run.get('start_date')} end={run.get('end_date')}",
             f"{'task':<20} {'state':<10} {'try':>3} {'seconds':>8}"]
    order = {t: i for i, t in enumerate((*STEPS, "publish", "publish_registry"))}
    for ti in sorted(tis, key=lambda t: order.get(t["task_id"], 99)):
        lines.append(f"{ti['task_id']:<20} {str(ti['state']):<10} {ti.get('try_number', 0):>3} "
                     f"{_seconds(ti) if _seconds(ti) is not None else '-':>8}")
    return "\n".join(lines)


@pytest.mark.slow
def test_rest_triggered_run_succeeds(rest_s3, airflow_rest):
    client, af = rest_s3[1], airflow_rest
    created = af.trigger(DAG_ID, run_conf(f"s3://{BUCKET}/runs/rest"))
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
    states = {ti["task_id"]: ti["state"] for ti in tis}
    # No registry section in the conf: the publish step's task is skipped.
    assert states == {**{s: "success" for s in STEPS}, "publish": "success", "publish_registry": "skipped"}, table
    assert all(ti["try_number"] <= 1 for ti in tis), table
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/rest/")["Contents"]}
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert f"runs/rest/{step}/manifest.json" in keys
    manifest = json.loads(client.get_object(Bucket=BUCKET, Key="runs/rest/export-ir/manifest.json")["Body"].read())
    assert manifest["metrics"]["fake_quantize"] > 0
