"""The start-up device check: a step asked for CUDA, an NPU or a non-CPU OpenVINO device that this machine
lacks exits 6 with a message naming the field and what is missing, before staging inputs or writing output.

These machines have onnxruntime's CPU build and OpenVINO with only its CPU device; the tests that rely on
that skip themselves where a GPU or NPU is present (there, the last test checks the positive case).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import onnxruntime as ort
import pytest

import builders
from container_support import ROOT, load_locks
from ptqflow.pipeline import devicecheck
from ptqflow.config import load_config
from ptqflow.errors import DeviceUnavailableError
from ptqflow.pipeline.steps import STEP_MODULES

PTQFLOW = [sys.executable, "-m", "ptqflow.cli"]
HAS_CUDA_EP = "CUDAExecutionProvider" in ort.get_available_providers()
needs_no_cuda = pytest.mark.skipif(HAS_CUDA_EP, reason="onnxruntime here has the CUDA provider")


def _openvino_devices() -> list[str]:
    try:
        import openvino
    except ImportError:
        return []
    return list(openvino.Core().available_devices)


needs_no_npu = pytest.mark.skipif("NPU" in _openvino_devices(), reason="an NPU is present")


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*PTQFLOW, *args], capture_output=True, text=True, timeout=180, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


def test_default_config_needs_no_device():
    assert devicecheck.needs(STEP_MODULES, load_config()) == []
    devicecheck.require(STEP_MODULES, load_config())  # nothing to check, nothing raised


def test_needs_follow_the_steps_that_run_models():
    cfg = load_config(None, {"device": "cuda", "validation.openvino_device": "NPU", "export.openvino_device": "cpu"})
    got = [(n.step, n.field, n.device) for n in devicecheck.needs(STEP_MODULES, cfg)]
    assert got == [("collect-stats", "device", "cuda"), ("quantize", "device", "cuda"),
                   ("validate", "device", "cuda"), ("validate", "validation.openvino_device", "NPU")]
    # fetch-model and build-calibration run no model: they never need the accelerator.
    assert devicecheck.needs(["fetch-model", "build-calibration"], cfg) == []


@needs_no_cuda
def test_step_on_absent_cuda_exits_6_before_staging_and_writes_nothing(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    r = cli("fetch-model", "--model", str(model), "--out", str(tmp_path / "fetch"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "stats"
    # The calibration input does not exist: staging it would fail with exit 3. Exit 6 shows the check came first.
    r = cli("collect-stats", "--in-model", str(tmp_path / "fetch"), "--in-calibration", str(tmp_path / "nothing"),
            "--out", str(out), "--device", "cuda")
    assert r.returncode == DeviceUnavailableError.exit_code == 6
    assert "collect-stats: device='cuda'" in r.stderr and "CUDAExecutionProvider" in r.stderr
    assert "Not running on the CPU instead" in r.stderr
    assert not out.exists() and not list(tmp_path.glob("*partial*"))


@needs_no_npu
def test_run_on_absent_npu_exits_6_before_the_first_step(tmp_path):
    model = builders.save(builders.mlp(), tmp_path / "m.onnx")
    out = tmp_path / "run"
    r = cli("run", "--model", str(model), "--data", str(tmp_path / "data"), "--output", str(out), "--device", "npu")
    assert r.returncode == 6, r.stderr
    assert "device='npu'" in r.stderr and "OpenVINO device 'NPU' is not present" in r.stderr
    assert not out.exists()  # not even fetch-model ran


def test_validate_on_absent_openvino_gpu_exits_6(tmp_path):
    if "GPU" in _openvino_devices():
        pytest.skip("an OpenVINO GPU is present")
    r = cli("check-device", "--step", "validate", "--set", "validation.openvino_device=GPU")
    assert r.returncode == 6
    found = json.loads(r.stdout)
    assert found["ok"] is False
    assert [(c["step"], c["field"], c["device"]) for c in found["checked"]] == [
        ("validate", "validation.openvino_device", "GPU")]
    assert "validation.openvino_device='GPU'" in r.stderr


def test_check_device_on_the_default_config_passes():
    r = cli("check-device")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"ok": True, "checked": []}


def test_nvidia_device_nodes_are_the_numbered_ones(tmp_path):
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()
    assert devicecheck.nvidia_device_nodes(tmp_path) == [str(tmp_path / "nvidia0"), str(tmp_path / "nvidia1")]
    assert devicecheck.nvidia_device_nodes(tmp_path / "absent") == []


@pytest.mark.skipif(not HAS_CUDA_EP or not devicecheck.nvidia_device_nodes(), reason="needs onnxruntime-gpu and a GPU")
def test_cuda_check_passes_where_a_gpu_is_present():
    r = cli("check-device", "--device", "cuda", "--step", "collect-stats")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True


@pytest.mark.slow
@pytest.mark.skipif(bool(devicecheck.nvidia_device_nodes()), reason="a GPU is visible here")
def test_cuda_provider_installed_but_no_gpu_exits_6(tmp_path):
    """The CUDA image's packages minus the CUDA libraries (onnxruntime-gpu from its lock, hash-checked) on this
    GPU-less machine: the provider is listed, so only the device check stands between the step and the CPU."""
    locks = load_locks()
    if locks.find_uv() is None:
        pytest.skip("uv is not installed (ptqflow's dev extra has it)")
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", locks.IMAGES["gpu"].lock.read_text())
    kept = [b for b in blocks if b[:1].isalnum() and not b.startswith("nvidia-")]
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("".join(kept))
    venv, uv = tmp_path / "venv", locks.find_uv()
    python = venv / "bin" / "python"
    for cmd in ([uv, "venv", "-q", str(venv), "--python", sys.executable],
                [uv, "pip", "install", "-q", "--python", str(python), "--require-hashes", "--no-deps", "-r", str(reqs)]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    r = subprocess.run([str(python), "-c", "import onnxruntime; print(onnxruntime.get_available_providers())"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert "CUDAExecutionProvider" in r.stdout, r.stdout + r.stderr
    out = tmp_path / "stats"
    r = subprocess.run([str(python), "-m", "ptqflow.cli", "collect-stats", "--in-model", str(tmp_path / "m"),
                        "--in-calibration", str(tmp_path / "c"), "--out", str(out), "--device", "cuda"],
                       capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 6, r.stderr
    assert "device='cuda' but no NVIDIA GPU is visible" in r.stderr
    assert not out.exists()
