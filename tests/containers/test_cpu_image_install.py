"""The CPU image's install, done here without Docker: its lock into a fresh virtual environment with the same
pip commands as containers/cpu/Dockerfile, ptqflow on top with --no-deps from a copy of the build context, then
``ptqflow --version`` and the README demo. Slow: downloads the locked wheels (or takes them from pip's cache)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from container_support import ROOT
from ptqflow import __version__

PIP = ["-m", "pip", "install", "--no-cache-dir", "--disable-pip-version-check"]


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def cpu_venv(tmp_path_factory) -> Path:
    """A venv built like the CPU image's: lock, ptqflow with --no-deps, then pip and setuptools removed."""
    work = tmp_path_factory.mktemp("cpu-image")
    context = work / "context"  # what .dockerignore lets through: the build does not touch the checkout
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.tmp"))
    venv = work / "venv"
    r = _run([sys.executable, "-m", "venv", str(venv)], 120)
    assert r.returncode == 0, r.stderr
    py = str(venv / "bin" / "python")
    r = _run([py, *PIP, "--require-hashes", "--no-deps", "--only-binary=:all:", "-r",
              str(ROOT / "containers" / "cpu" / "requirements.lock")], 900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = _run([py, *PIP, "--no-deps", "."], 300, cwd=context)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    check = _run([py, "-m", "pip", "check"], 120)
    (work / "pip-check.txt").write_text(check.stdout)
    # The image drops the installers from its venv: ptqflow must not need them at run time.
    r = _run([py, "-m", "pip", "uninstall", "--yes", "--disable-pip-version-check", "pip", "setuptools"], 120)
    assert r.returncode == 0, r.stderr
    return venv


@pytest.mark.slow
def test_cpu_lock_installs_and_is_complete(cpu_venv):
    r = _run([str(cpu_venv / "bin" / "ptqflow"), "--version"], 120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ptqflow {__version__}"
    # The lock is complete: pip's only complaint is the OCR package's opencv-python, which the image replaces
    # by the headless build of the same cv2 module.
    report = (cpu_venv.parent / "pip-check.txt").read_text()
    problems = [ln for ln in report.splitlines() if ln.strip()]
    assert problems and all("requires opencv-python" in ln for ln in problems), report
    r = _run([str(cpu_venv / "bin" / "python"), "-c", "import cv2, onnxruntime, openvino, boto3, rapidocr_onnxruntime;"
              "print(onnxruntime.get_available_providers())"], 120)
    assert r.returncode == 0, r.stderr
    assert "CPUExecutionProvider" in r.stdout


@pytest.mark.slow
def test_cpu_image_runs_the_readme_demo(cpu_venv, tmp_path):
    r = _run([str(cpu_venv / "bin" / "ptqflow"), "demo", "--output", str(tmp_path / "demo")], 900, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "gate: PASSED" in r.stdout
    assert "against f32" in r.stdout  # the speedup line the README promises
    assert (tmp_path / "demo" / "pipeline" / "export-ir" / "model.xml").is_file()
