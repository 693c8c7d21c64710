"""The images' lock files: fresh against pyproject.toml (offline), consistent with its version ranges, one
onnxruntime flavour each with the device's packages, hash-pinned; and (slow, needs uv and the package index)
re-resolving with the recorded inputs gives the committed pins."""

from __future__ import annotations

import re
import subprocess

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from container_support import ROOT

IMAGE_NAMES = ("cpu", "gpu", "npu")
# The Linux x86-64 CPython 3.11 the images run, for evaluating requirement markers.
TARGET = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython"}


def test_every_image_has_a_lock_matching_pyproject(locks):
    assert sorted(locks.IMAGES) == sorted(IMAGE_NAMES)
    for spec in locks.IMAGES.values():
        assert locks.stale(spec) is None, f"{locks.stale(spec)}: run `make locks`"
    assert locks.main(["check"]) == 0


def test_a_pyproject_change_makes_the_locks_stale(locks, tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    original = (ROOT / "pyproject.toml").read_text()
    pyproject.write_text(original)
    before = {n: locks.digest(s, pyproject) for n, s in locks.IMAGES.items()}
    assert before == {n: locks.recorded_digest(s.lock) for n, s in locks.IMAGES.items()}
    pyproject.write_text(original.replace('"onnx>=1.16"', '"onnx>=1.17"'))
    assert all(locks.digest(s, pyproject) != before[n] for n, s in locks.IMAGES.items())
    pyproject.write_text(original.replace('openvino = ["openvino>=2024.4"]', 'openvino = ["openvino>=2025.0"]'))
    assert all(locks.digest(s, pyproject) != before[n] for n, s in locks.IMAGES.items())
    # An extra no image uses does not touch the locks.
    pyproject.write_text(original.replace('"pytest>=8"', '"pytest>=9"'))
    assert {n: locks.digest(s, pyproject) for n, s in locks.IMAGES.items()} == before


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_pins_satisfy_pyproject_ranges(locks, name):
    spec = locks.IMAGES[name]
    pins = locks.pins(spec.lock)
    replaced = {locks.normalize(old) for old in spec.replace}
    wanted = [Requirement(r) for r in locks.requirements(spec)] + [Requirement(r) for r in locks.additions(spec)]
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate(TARGET):
            continue
        name_ = locks.normalize(req.name)
        if name_ in replaced:
            assert name_ not in pins, f"{name}: {req.name} is replaced but still pinned"
            continue
        assert name_ in pins, f"{name}: {req.name} is not pinned"
        assert req.specifier.contains(pins[name_], prereleases=True), f"{name}: {req.name}=={pins[name_]} not in {req}"


EXPECTED = {
    "cpu": ("onnxruntime", {"openvino", "boto3", "rapidocr-onnxruntime", "opencv-python-headless"},
            {"opencv-python"}),
    "gpu": ("onnxruntime-gpu", {"openvino", "boto3", "nvidia-cuda-runtime", "nvidia-cublas", "nvidia-cufft",
                                "nvidia-curand", "nvidia-cudnn-cu13"}, {"rapidocr-onnxruntime"}),
    "npu": ("onnxruntime", {"openvino", "boto3"}, {"rapidocr-onnxruntime"}),
}


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_one_onnxruntime_flavour_and_the_device_packages(locks, name):
    pins = locks.pins(locks.IMAGES[name].lock)
    flavour, present, absent = EXPECTED[name]
    assert [f for f in locks.ONNXRUNTIME_FLAVOURS if f in pins] == [flavour]
    assert present <= set(pins), present - set(pins)
    assert not absent & set(pins), absent & set(pins)
    if name != "gpu":
        assert not [p for p in pins if p.startswith("nvidia-")], "CUDA wheels only in the CUDA image"


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_pin_is_exact_and_hashed(locks, name):
    text = locks.IMAGES[name].lock.read_text()
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", text.split("\n", 4)[-1])
    entries = [b for b in blocks if b.strip() and not b.startswith("#")]
    assert len(entries) == len(locks.pins(locks.IMAGES[name].lock)) > 10
    for block in entries:
        assert re.match(r"^[A-Za-z0-9][\w.-]*(\[[^\]]*\])?==\S+ \\\n", block), block.splitlines()[0]
        assert "--hash=sha256:" in block, block.splitlines()[0]


@pytest.mark.slow
def test_resolving_again_gives_the_committed_pins(locks, tmp_path):
    """The locks are what `make locks` writes: same inputs and index cutoff, same pins (uv, package index)."""
    if locks.find_uv() is None:
        pytest.skip("uv is not installed (ptqflow's dev extra has it)")
    for name, spec in locks.IMAGES.items():
        fresh = locks.compile_lock(spec, tmp_path / name / "requirements.lock")
        assert locks.pins(fresh) == locks.pins(spec.lock), name
        assert locks.recorded_digest(fresh) == locks.recorded_digest(spec.lock)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_lock_installs_on_the_image_platform_dry_run(locks, name, tmp_path):
    """Every pin has a wheel for CPython 3.11 on x86-64 Linux and the hashes are accepted (uv's dry run reads
    metadata only; the GPU lock's CUDA wheels are gigabytes, so nothing is downloaded)."""
    if locks.find_uv() is None:
        pytest.skip("uv is not installed (ptqflow's dev extra has it)")
    spec = locks.IMAGES[name]
    r = subprocess.run([locks.find_uv(), "pip", "install", "--dry-run", "--no-deps", "--require-hashes",
                        "--only-binary=:all:", "-r", str(spec.lock), f"--python-version={locks.PYTHON_VERSION}",
                        f"--python-platform={locks.PLATFORM}", f"--target={tmp_path / 'target'}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    flavour = EXPECTED[name][0]
    assert f" + {flavour}=={locks.pins(spec.lock)[flavour]}" in r.stderr + r.stdout
    assert not list(tmp_path.rglob("*.py")), "a dry run installs nothing"
