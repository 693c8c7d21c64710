"""Airflow local mode end to end: dag.test() runs the six steps on a tiny model with every artifact on an S3
server on loopback (moto), statistics and validation each in 3 mapped shards and their merges, and publishes the
Assets; a failed gate fails validate at once (no retry) in a run of one task per step, whose statistics and INT8
model are byte for byte the sharded run's and whose validation metrics are its values; the same failed gate,
validated in 3 shards, fails merge_validation and the run; and a dynamic quantization run skips every
collect-stats task."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3server import moto_server, s3_env
from tiny_run import seed_bucket

BUCKET = "ptqflow-airflow"
# 24 samples: 4 to validate (3 shards of 1, 1 and 2 samples), 20 to calibrate (3 shards of whole 8-sample blocks:
# 8, 8 and 4 samples).
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


# What validation measured, as report.json has it: equal between runs on the same data and models whatever their
# shards (the speed section is measured, the verdict and gate rows depend on the gate's config).
MEASURED = ("samples", "labeled", "accuracy", "fidelity", "layers", "device")


@pytest.fixture(scope="module")
def sharded_run(s3):
    """The whole pipeline into runs/ok with statistics and validation each in 3 shards (3 mapped tasks and the
    merge each)."""
    env, client, tmp = s3
    conf = _conf("ok")
    conf.update(min_cosine=0.5, statistics_shards=3, validation_shards=3)
    return _run(env, tmp, conf)


def _gate_conf():
    conf = _conf("gate", min_sqnr_db=500.0)
    conf["min_cosine"] = 0.5
    return conf


@pytest.fixture(scope="module")
def gate_run(s3):
    """A run into runs/gate whose gate fails (one task per step: both shard params left at 1), and its
    report.json as that run left it (the sharded gate run replaces it)."""
    env, client, tmp = s3
    result = _run(env, tmp, _gate_conf())
    return result, json.loads(_get(client, "runs/gate/validate/report.json"))


@pytest.fixture(scope="module")
def sharded_gate_run(s3, gate_run):
    """The gate run again, validated in 3 shards: every step before validation is its cached result."""
    env, client, tmp = s3
    return _run(env, tmp, {**_gate_conf(), "validation_shards": 3})


@pytest.fixture(scope="module")
def dynamic_run(s3):
    """A run into runs/dyn with ``static: false`` (dynamic quantization) and statistics_shards 2."""
    env, client, tmp = s3
    return _run(env, tmp, {**_conf("dyn"), "min_cosine": 0.5, "static": False, "statistics_shards": 2})


def _get(client, key: str) -> bytes:
    return client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def _shard_samples(client, step: str) -> list[int]:
    """The sample counts of the sharded run's 3 shards of ``step``, each checked to be ``step``'s output for it."""
    counts = []
    for i in range(3):
        manifest = json.loads(_get(client, f"runs/ok/{step}-shards/{i}-of-3/manifest.json"))
        assert manifest["step"] == step and manifest["config"]["shard"] == f"{i}/3", manifest
        counts.append(manifest["metrics"]["num_samples"])
    return counts


@pytest.mark.slow
def test_local_mode_whole_pipeline_on_s3(s3, sharded_run):
    env, client, tmp = s3
    result = json.loads(json.dumps(sharded_run))
    assert result["state"] == "success", result
    # No registry section in the conf: the publish step's task is skipped; with statistics and validation in shards
    # the one-task collect_stats and validate are gated off; everything else succeeds, each mapped shard included.
    for skipped in ("publish_registry", "collect_stats", "validate"):
        assert result["tasks"].pop(skipped)[0] == "skipped", (skipped, result)
    assert all(s == "success" for s, _ in result["tasks"].values()), result
    fan_out = {f"{step}_shard[{i}]" for i in range(3) for step in ("collect_stats", "validate")}
    fan_out |= {"merge_stats", "statistics_shards", "merge_validation", "validation_shards"}
    assert fan_out <= set(result["tasks"]), result
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/ok/")["Contents"]}
    for step in ("fetch-model", "build-calibration", "collect-stats", "quantize", "validate", "export-ir"):
        assert f"runs/ok/{step}/manifest.json" in keys
    assert "runs/ok/export-ir/model.xml" in keys and "runs/ok/validate/report.html" in keys


@pytest.mark.slow
def test_gate_failure_fails_validate_without_retry(s3, gate_run):
    env, client, tmp = s3
    result, _ = gate_run
    assert result["state"] == "failed"
    assert result["tasks"]["validate"] == ["failed", 1]  # AirflowFailException: no retries used
    assert result["tasks"]["export_ir"][0] == "upstream_failed"
    report = client.list_objects_v2(Bucket=BUCKET, Prefix="runs/gate/validate/report.json")
    assert report.get("KeyCount") == 1  # the report was published before the gate failed the task
    # Both shard params 1: collect_stats ran; the shard task mapped over nothing and was skipped, and the merge;
    # validate likewise.
    assert result["tasks"]["collect_stats"][0] == "success"
    assert result["tasks"]["collect_stats_shard"][0] == "skipped" and result["tasks"]["merge_stats"][0] == "skipped"
    assert result["tasks"]["validate_shard"][0] == "skipped" and result["tasks"]["merge_validation"][0] == "skipped"


@pytest.mark.slow
def test_three_mapped_shards_give_the_statistics_and_model_of_one_task(s3, sharded_run, gate_run):
    """Uneven shards (8, 8, 4 samples) merged into <output>/collect-stats: statistics.npz and plan.json are the
    bytes the one-task run wrote, and quantize made the same INT8 model (its config is the same in both runs)."""
    env, client, tmp = s3
    assert _shard_samples(client, "collect-stats") == [8, 8, 4]
    merged = json.loads(_get(client, "runs/ok/collect-stats/manifest.json"))
    assert merged["step"] == "merge-stats" and merged["metrics"]["shards"] == 3
    assert json.loads(_get(client, "runs/gate/collect-stats/manifest.json"))["step"] == "collect-stats"
    for name in ("collect-stats/statistics.npz", "collect-stats/plan.json", "quantize/model.onnx"):
        assert _get(client, f"runs/ok/{name}") == _get(client, f"runs/gate/{name}"), name


@pytest.mark.slow
def test_three_validation_shards_give_the_metrics_of_one_task(s3, sharded_run, gate_run):
    """Uneven validation shards (1, 1 and 2 samples) merged into <output>/validate: the report's measured values
    (accuracy, fidelity per output, per-layer rows, sample counts) are those the one validate task reported."""
    env, client, tmp = s3
    assert _shard_samples(client, "validate") == [1, 1, 2]
    merged = json.loads(_get(client, "runs/ok/validate/manifest.json"))
    assert merged["step"] == "merge-validation" and merged["extra"]["shards"] == 3
    report, (_, whole) = json.loads(_get(client, "runs/ok/validate/report.json")), gate_run
    assert report["verdict"] == "pass" and whole["verdict"] == "fail"  # only the gate's thresholds differ
    assert {k: report[k] for k in MEASURED} == {k: whole[k] for k in MEASURED}
    assert report["samples"] == 4 and report["fidelity"]


@pytest.mark.slow
def test_a_gate_failed_after_the_merge_fails_the_run(s3, gate_run, sharded_gate_run):
    """validation_shards 3 with the failing gate: the shards pass (a shard has no gate), merge_validation publishes
    the report and fails at once (no retry), export-ir never runs; the merged report is the one-task report (its
    gate rows and verdict included: same config), the speed section aside."""
    env, client, tmp = s3
    result = sharded_gate_run
    assert result["state"] == "failed"
    assert result["tasks"]["validate"][0] == "skipped"
    assert all(result["tasks"][f"validate_shard[{i}]"][0] == "success" for i in range(3)), result
    assert result["tasks"]["merge_validation"] == ["failed", 1]
    assert result["tasks"]["export_ir"][0] == "upstream_failed"
    report, (_, whole) = json.loads(_get(client, "runs/gate/validate/report.json")), gate_run
    assert json.loads(_get(client, "runs/gate/validate/manifest.json"))["step"] == "merge-validation"
    assert report["verdict"] == "fail"
    assert {k: v for k, v in report.items() if k != "speed"} == {k: v for k, v in whole.items() if k != "speed"}


@pytest.mark.slow
def test_dynamic_quantization_skips_collect_stats(s3, dynamic_run):
    """static false: statistics_needed decides no statistics, so the one-task gate, the shard list, the shards and
    their merge are skipped; quantize writes the dynamic model without them and the run succeeds."""
    env, client, tmp = s3
    result = dynamic_run
    assert result["state"] == "success", result
    assert result["tasks"].pop("statistics_needed")[0] == "success"
    for name in ("statistics_unsharded", "statistics_shards", "collect_stats", "collect_stats_shard", "merge_stats",
                 "publish_registry"):
        assert result["tasks"].pop(name)[0] == "skipped", (name, result)
    assert result["tasks"].pop("validate_shard")[0] == "skipped" and result["tasks"].pop("merge_validation")[0] == "skipped"
    assert all(s == "success" for s, _ in result["tasks"].values()), result
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="runs/dyn/")["Contents"]}
    assert not any(k.startswith("runs/dyn/collect-stats") for k in keys), sorted(keys)
    manifest = json.loads(_get(client, "runs/dyn/quantize/manifest.json"))
    assert "statistics" not in manifest.get("inputs", {}), manifest


@pytest.fixture(scope="module")
def accuracy_control_run(s3):
    """A run into runs/ac of the outlier MLP whose gate (top-1 agreement 0.95) fails without accuracy control,
    with the DAG's ``accuracy_control`` Param on over a base config that has it off."""
    from test_accuracy_gate import config, write_inputs

    env, client, tmp = s3
    model, data = write_inputs(tmp / "ac")
    client.upload_file(str(model), BUCKET, "in/ac/model.onnx")
    for path in sorted(data.iterdir()):
        client.upload_file(str(path), BUCKET, f"in/ac/data/{path.name}")
    conf = {"model": f"s3://{BUCKET}/in/ac/model.onnx", "data": f"s3://{BUCKET}/in/ac/data/",
            "output": f"s3://{BUCKET}/runs/ac", "accuracy_control": True, "config": config(False)}
    return _run(env, tmp, conf)


@pytest.mark.slow
def test_accuracy_control_model_is_exported_and_published(s3, accuracy_control_run):
    """validate reads the statistics from collect-stats' S3 URI, its accuracy control makes the gate pass and
    publishes the model it found under runs/ac/validate/quantized; export-ir converts that one (its report input,
    from validate's XCom) and the run succeeds."""
    env, client, tmp = s3
    result = accuracy_control_run
    assert result["state"] == "success", result
    assert result["tasks"]["validate"][0] == "success" and result["tasks"]["export_ir"][0] == "success"
    report = json.loads(_get(client, "runs/ac/validate/report.json"))
    assert report["verdict"] == "pass" and [r["tensor"] for r in report["accuracy_control"]["reverted"]] == ["h0"]
    validated = json.loads(_get(client, "runs/ac/validate/manifest.json"))
    assert set(validated["inputs"]) == {"model", "quantized", "calibration", "statistics"}
    assert {"quantized/model.onnx", "quantized/summary.json"} <= set(validated["outputs"])  # staged with it
    assert _get(client, "runs/ac/validate/quantized/model.onnx") != _get(client, "runs/ac/quantize/model.onnx")
    ir = json.loads(_get(client, "runs/ac/export-ir/manifest.json"))
    assert ir["extra"]["int8_from"] == "validate (accuracy control)" and "report" in ir["inputs"]
