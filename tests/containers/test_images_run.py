"""The cpu and npu images built for real (a Docker engine, or buildah where no daemon runs) and run as their
non-root user: ``ptqflow --version``, the README demo (CPU image), and every step pod of a run as the Kubeflow
pipeline and the Airflow DAG would start it on a cluster (image, command, args, env, working directory; see
pod_specs.py), chained through local artifact directories bound into the containers, on the demo's recognizer
and a few of its rendered text lines.

The NPU image is built without Intel's user-space driver (NPU_DRIVER_URL empty): it is downloaded from GitHub,
out of reach here, and only device "npu" on an NPU node uses it; every step below runs on the CPU. The CUDA
image is not built (its CUDA wheels take several GB and minutes); test_locks and the CPU install test check
what can be checked of it without a GPU.

Slow: both builds, the demo and twenty-two step containers (twelve for Kubeflow, ten for Airflow with both steps in
2 shards); see docs/containers.md for the times measured.
Images and containers get names unique to the run and are removed afterwards; the fallback base image
(localhost/ptqflow-base:bookworm) is kept as a cache.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest

from container_engine import Engine, Mount, find_engine
from pod_specs import Pod, airflow_pods, kfp_pods
from ptqflow import __version__
from ptqflow.orchestration import images

pytestmark = pytest.mark.slow

IMAGE_UID = 10001  # USER in every Dockerfile
ARTIFACTS = "/ptqflow"  # where the run's local artifact directory appears inside the containers
# Small enough for a minute of steps, large enough for a calibration and a validation split.
N_LINES, VALIDATION_LINES, SUBSET = 48, 16, 16
# The gate is loosened: what is tested is that the pods run, not what INT8 does to 32 calibration lines.
GATE = {"max_accuracy_drop": 0.5, "min_cosine": 0.5}


@pytest.fixture(scope="module")
def engine() -> Engine:
    found, why = find_engine()
    if found is None:
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def built(engine, request) -> dict[str, str]:
    """{"cpu": tag, "npu": tag}: both images built under names unique to this run, removed at the end."""
    run = uuid.uuid4().hex[:10]
    tags: dict[str, str] = {}

    def remove():
        for tag in tags.values():
            engine.remove(tag)

    request.addfinalizer(remove)
    for device, options in (("cpu", ()), ("npu", ("--build-arg", "NPU_DRIVER_URL="))):
        tags[device] = f"localhost/ptqflow-test-{run}:{device}"
        seconds = engine.build(device, tags[device], "--force-rm", *options)
        print(f"\n{engine.name} built the {device} image in {seconds:.0f} s: "
              f"{engine.size(tags[device]) / 1e6:.0f} MB")
    return tags


def _give_to_image_user(path: Path) -> None:
    """Let the image's user write under ``path`` (chown as root, else open the directories up)."""
    for p in [path, *path.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(p, IMAGE_UID, IMAGE_UID)
        elif p.is_dir():
            p.chmod(0o777)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[Path, dict]:
    """A local artifact directory with the demo's recognizer and rendered text lines under in/, and the
    config the run adds to the parameters (the demo's, minus model and data source)."""
    from ptqflow import demo

    root = tmp_path_factory.mktemp("image-run")
    prepared = demo.prepare(root / "in", n_images=N_LINES)
    shutil.copy2(prepared.model_path, root / "in" / "model.onnx")
    config = json.loads(json.dumps(prepared.config))
    del config["model"], config["data"]["source"], config["quantization"]
    config["data"]["validation_size"] = VALIDATION_LINES
    config["validation"]["latency_iterations"] = 3
    _give_to_image_user(root)
    return root, config


def _run_pods(engine: Engine, pods: list[Pod], image_of: dict[str, str], root: Path) -> None:
    """Start each pod's container in order and check it wrote its outputs; AssertionError names the first
    that failed, with its log tail."""
    for pod in pods:
        assert pod.image in image_of, f"{pod.task}: rendered image {pod.image}, built: {sorted(image_of)}"
        start = time.monotonic()
        r = engine.run(image_of[pod.image], pod.argv, env=pod.env, workdir=pod.workdir,
                       mounts=(Mount(str(root), ARTIFACTS),))
        assert r.returncode == 0, \
            f"{pod.task} exited {r.returncode}: {pod.argv}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        for out in pod.outputs:
            host = root / Path(out).relative_to(ARTIFACTS)
            assert host.exists(), f"{pod.task} did not write {out}"
        print(f"{pod.task} ({pod.image}): {time.monotonic() - start:.1f} s")


@pytest.mark.parametrize("device", ["cpu", "npu"])
def test_version_as_the_non_root_user(engine, built, device):
    r = engine.run(built[device], ["ptqflow", "--version"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ptqflow {__version__}"
    r = engine.run(built[device], ["python", "-c", "import os; print(os.getuid(), os.getcwd())"])
    assert r.stdout.split() == [str(IMAGE_UID), "/home/ptqflow"], r.stdout + r.stderr


def test_demo_passes_in_the_cpu_image(engine, built):
    # Only the CPU image carries the demo's OCR package (rapidocr-onnxruntime); the NPU and CUDA locks leave
    # it out, and `ptqflow demo` there says so (exit 3).
    start = time.monotonic()
    r = engine.run(built["cpu"], ["ptqflow", "demo", "--output", "/tmp/demo"], timeout=1200)
    print(f"demo: {time.monotonic() - start:.0f} s")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "gate: PASSED" in r.stdout
    assert "against f32" in r.stdout


def test_kubeflow_pods_run_in_the_cpu_image(engine, built, run_dir):
    root, config = run_dir
    pods = kfp_pods({"model": f"{ARTIFACTS}/in/model.onnx", "data": f"{ARTIFACTS}/in/data",
                     "output": f"{ARTIFACTS}/kfp-run", "subset_size": SUBSET,
                     "max_accuracy_drop": str(GATE["max_accuracy_drop"]), "min_cosine": str(GATE["min_cosine"]),
                     "base_config": json.dumps(config)}, f"{ARTIFACTS}/kfp")
    # statistics_shards and validation_shards are 1 by default: each loop runs its step once (on the whole split)
    # and its merge passes the artifact on (the demo's OCR metric, a validation.metric function, needs the whole
    # split).
    # Static quantization: resolve-config says collect-stats is needed (checked below against what it wrote), so
    # the dsl.If branch with the statistics loop runs.
    assert [p.task for p in pods] == ["resolve-config", "fetch-model", "build-calibration", "statistics-shards",
                                      "validation-shards", "for-loop-2/0/collect-stats", "merge-stats", "quantize",
                                      "for-loop-3/0/validate", "merge-validation", "export-ir", "publish"]
    # KFP's launcher creates each output artifact's parent directory before the command starts.
    for pod in pods:
        (root / "kfp" / pod.task).mkdir(parents=True)
    _give_to_image_user(root / "kfp")
    _run_pods(engine, pods, {images.image("cpu"): built["cpu"]}, root)
    assert (root / "kfp" / "resolve-config" / "collect_stats_needed.json").read_text().strip() == "true"
    assert (root / "kfp" / "export-ir" / "ir" / "model.xml").is_file()
    report = json.loads((root / "kfp" / "merge-validation" / "report" / "report.json").read_text())
    assert report, "validate wrote an empty report"
    assert (root / "kfp" / "publish" / "registration").exists()  # no registry configured: skipped, recorded


def test_airflow_kubernetes_pods_run_in_the_cpu_and_npu_images(engine, built, run_dir):
    root, config = run_dir
    # The DAG built for the NPU: the model steps' pods use the NPU image, the others the CPU image. The run
    # asks for device cpu, as there is no NPU here.
    # validate runs in the NPU image, which has no rapidocr for the demo's OCR metric: outputs are compared
    # with FP32 (cosine, SQNR) without labels.
    config = json.loads(json.dumps(config))
    del config["data"]["label_file"], config["validation"]["metric"], config["validation"]["gate"]["accuracy_metric"]
    # Statistics and validation in 2 shards each: the shard pods in the NPU image, the merge pods in the CPU image.
    conf = {"model": f"{ARTIFACTS}/in/model.onnx", "data": f"{ARTIFACTS}/in/data", "output": f"{ARTIFACTS}/airflow",
            "device": "cpu", "subset_size": SUBSET, "min_speedup": None, **GATE, "config": config,
            "statistics_shards": 2, "validation_shards": 2}
    pods, source = airflow_pods("npu", conf, root)
    print(f"KubernetesPodOperator pods {source}")
    assert [p.task for p in pods] == ["fetch-model", "build-calibration", "collect-stats[0/2]", "collect-stats[1/2]",
                                      "merge-stats", "quantize", "validate[0/2]", "validate[1/2]", "merge-validation",
                                      "export-ir"]
    assert {p.image for p in pods} == {images.image("cpu"), images.image("npu")}
    assert all(p.env["PTQFLOW_STEP"] == p.task.split("[")[0] for p in pods)
    _run_pods(engine, pods, {images.image("cpu"): built["cpu"], images.image("npu"): built["npu"]}, root)
    assert (root / "airflow" / "export-ir" / "model.xml").is_file()
    assert json.loads((root / "airflow" / "validate" / "manifest.json").read_text())["step"] == "merge-validation"
