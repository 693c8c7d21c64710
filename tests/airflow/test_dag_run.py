"""Airflow local mode end to end: dag.test() runs the six steps on a tiny model with every artifact on an S3
server on loopback (moto), statistics in 3 mapped shards and their merge, and publishes the Assets; a failed gate
fails validate at once (no retry) in a run that collects statistics in one task, whose statistics and INT8 model
are byte for byte the sharded run's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3server import moto_server, s3_env
from tiny_run import seed_bucket

BUCKET = "ptqflow-airflow"
# 24 samples: 4 to validate, 20 to calibrate (3 shards of whole 8-sample blocks: 8, 8 and 4 samples).
BASE = {"data": {"validation_size": 4, "preprocess": {"method": "none"}},
        "validation": {"latency_iterations": 2, "gate": {"min_speedup": None, "max_accuracy_drop": None}}}
RUNNER = """
import json, os, runpy, sys
# dag.test() needs the DAG from a file in the dags folder (it serializes it from there).
dag = runpy.run_path(os.path.join(os.environ["AIRFLOW__CORE__DAGS_FOLDER"], "ptqflow_quantize.py"))["dag"]
for t in dag.tasks:
    t.retry_delay = __import__("datetime").timedelta(seconds=0)
dr = dag.test(run_conf=json.loads(sys.argv[1]))
states = {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): [str(ti.state), ti.try_number]
          for ti in dr.get_task_instances()}
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
    """dag.test() with ``conf`` in a subprocess; returns the run's state and {task_id[map_index]: [state, try]}."""
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
            "output": f"s3://{BUCKET}/runs/{run}", "subset_size": 20, "min_cosine": "0.5", "config": base}


@pytest.fixture(scope="module")
def sharded_run(s3):
    """The whole pipeline into runs/ok with statistics in 3 shards (3 mapped tasks and the merge)."""
    env, client, tmp = s3
    conf = _conf("ok")
    conf.update(min_cosine=0.5, statistics_shards=3)
    return _run(env, tmp, conf)


@pytest.fixture(scope="module")
def gate_run(s3):
    """A run into runs/gate whose gate fails (statistics in one task: statistics_shards left at 1)."""
    env, client, tmp = s3
    conf = _conf("gate", min_sqnr_db=500.0)
    conf["min_cosine"] = 0.5
    return _run(env, tmp, conf)


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


@pytest.mark.slow
def test_local_mode_whole_pipeline_on_s3(s3, sharded_run):
    env, client, tmp = s3
    result = json.loads(json.dumps(sharded_run))
    assert result["state"] == "success", result
    # No registry section in the conf: the publish step's task is skipped; with statistics in shards the one-task
    # collect_stats is gated off; everything else succeeds, each of the 3 mapped shard tasks included.
    for skipped in ("publish_registry", "collect_stats"):
        assert result["tasks"].pop(skipped)[0] == "skipped", (skipped, result)
    assert all(s == "success" for s, _ in result["tasks"].values()), result
    fan_out = {f"collect_stats_shard[{i}]" for i in range(3)} | {"merge_stats", "statistics_shards"}
    assert fan_out <= set(result["tasks"]), result
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/ok/")["Contents"]}
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert f"runs/ok/{step}/manifest.json" in keys
    assert "runs/ok/export-ir/model.xml" in keys and "runs/ok/validate/report.html" in keys


@pytest.mark.slow
def test_gate_failure_fails_validate_without_retry(s3, gate_run):
    env, client, tmp = s3
    result = gate_run
    assert result["state"] == "failed"
    assert result["tasks"]["validate"] == ["failed", 1]  # AirflowFailException: no retries used
    assert result["tasks"]["export_ir"][0] == "upstream_failed"
    report = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/gate/validate/report.json")
    assert report.get("KeyCount") == 1  # the report was published before the gate failed the task
    # statistics_shards 1: collect_stats ran; the shard task mapped over nothing and was skipped, and the merge.
    assert result["tasks"]["collect_stats"][0] == "success"
    assert result["tasks"]["collect_stats_shard"][0] == "skipped" and result["tasks"]["merge_stats"][0] == "skipped"


@pytest.mark.slow
def test_three_mapped_shards_give_the_statistics_and_model_of_one_task(s3, sharded_run, gate_run):
    """Uneven shards (8, 8, 4 samples) merged into <output>/collect-stats: statistics.npz and plan.json are the
    bytes the one-task run wrote, and quantize made the same INT8 model (its config is the same in both runs)."""
    env, client, tmp = s3
    counts = []
    for i in range(3):
        manifest = json.loads(_get(client, f"runs/ok/collect-stats-shards/{i}-of-3/manifest.json"))
        assert manifest["step"] == "collect-stats" and manifest["config"]["shard"] == f"{i}/3"
        counts.append(manifest["metrics"]["num_samples"])
    assert counts == [8, 8, 4], counts
    merged = json.loads(_get(client, "runs/ok/collect-stats/manifest.json"))
    assert merged["step"] == "merge-stats" and merged["metrics"]["shards"] == 3
    assert json.loads(_get(client, "runs/gate/collect-stats/manifest.json"))["step"] == "collect-stats"
    for name in ("collect-stats/statistics.npz", "collect-stats/plan.json", "quantize/model.onnx"):
        assert _get(client, f"runs/ok/{name}") == _get(client, f"runs/gate/{name}"), name
