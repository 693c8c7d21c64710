"""Airflow local mode end to end: dag.test() runs the six steps on a tiny model with every artifact on an S3
server on loopback (moto), publishes the Assets; a failed gate fails validate at once (no retry)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3server import moto_server, s3_env
from tiny_run import seed_bucket

BUCKET = "ptqflow-airflow"
BASE = {"data": {"validation_size": 8, "preprocess": {"method": "none"}},
        "validation": {"latency_iterations": 2, "gate": {"min_speedup": None, "max_accuracy_drop": None}}}
RUNNER = """
import json, os, runpy, sys
# dag.test() needs the DAG from a file in the dags folder (it serializes it from there).
dag = runpy.run_path(os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "ptqflow_quantize.py"))["dag"]
for t in dag.tasks:
    t.retry_delay = __import__("datetime").timedelta(seconds=0)
dr = dag.test(run_conf=json.loads(sys.argv[1]))
states = {ti.task_id: [str(ti.state), ti.try_number] for ti in dr.get_task_instances()}
print("RESULT" + json.dumps({"state": str(dr.state), "tasks": states}))
"""


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    import boto3

    tmp = tmp_path_factory.mktemp("af-e2e")
    with moto_server() as endpoint:
        env = {**os.environ, **s3_env(endpoint), "AIRFLOW_HOME": str(tmp / "home"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PTQFLOW_AIRFLOW_MODE": "local",
               "AIRFLOW__CORE__DAGS_FOLDER": str(Path(__file__).resolve().parents[2] / "dags")}
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        seed_bucket(client, BUCKET, tmp)
        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True, timeout=300)
        yield env, client, tmp


def _run(env, tmp, conf):
    script = tmp / "run_dag.py"
    script.write_text(RUNNER)
    proc = subprocess.run([sys.executable, str(script), json.dumps(conf)], env=env, capture_output=True,
                          text=True, timeout=600, cwd=tmp)
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")]
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[-1][len("RESULT"):])


def _conf(run, **gate):
    base = json.loads(json.dumps(BASE))
    base["validation"]["gate"].update(gate)
    return {"model": f"s3://{BUCKET}/in/model.onnx", "data": f"s3://{BUCKET}/in/data/",
            "output": f"s3://{BUCKET}/runs/{run}", "subset_size": 16, "min_cosine": "0.5", "config": base}


@pytest.mark.slow
def test_local_mode_whole_pipeline_on_s3(s3):
    env, client, tmp = s3
    conf = _conf("ok")
    conf["min_cosine"] = 0.5
    result = _run(env, tmp, conf)
    assert result["state"] == "success", result
    # No registry section in the conf: the publish step's task is skipped, everything else succeeds.
    assert result["tasks"].pop("publish_registry")[0] == "skipped", result
    assert all(s == "success" for s, _ in result["tasks"].values()), result
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/ok/")["Contents"]}
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert f"runs/ok/{step}/manifest.json" in keys
    assert "runs/ok/export-ir/model.xml" in keys and "runs/ok/validate/report.html" in keys


@pytest.mark.slow
def test_gate_failure_fails_validate_without_retry(s3):
    env, client, tmp = s3
    conf = _conf("gate", min_sqnr_db=500.0)
    conf["min_cosine"] = 0.5
    result = _run(env, tmp, conf)
    assert result["state"] == "failed"
    assert result["tasks"]["validate"] == ["failed", 1]  # AirflowFailException: no retries used
    assert result["tasks"]["export_ir"][0] == "upstream_failed"
    report = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/gate/validate/report.json")
    assert report.get("KeyCount") == 1  # the report was published before the gate failed the task
