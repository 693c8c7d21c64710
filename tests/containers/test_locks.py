"""The images' lock files and the test environments' constraints: fresh against pyproject.toml and untouched since
`make locks` wrote them (offline), consistent with its version ranges, one onnxruntime flavour per image with the
device's packages, image pins hash-pinned, each script installing through its own constraints; and (slow, needs uv
and the package index) resolving again as of each file's recorded cutoff keeps its pins, and would not keep a pin
changed by hand."""

from __future__ import annotations

import dataclasses
import re
import subprocess

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from container_support import ROOT

IMAGE_NAMES = ("cpu", "gpu", "npu")
ENV_NAMES = ("dev", "airflow", "kfp", "mlflow-server", "test-models")
ALL_NAMES = IMAGE_NAMES + ENV_NAMES
PROJECT_ENVS = {"dev", "airflow", "kfp"}  # the environments that install ptqflow (mlflow-server, test-models do not)
# The Linux x86-64 CPython 3.11 the images and CI run, for evaluating requirement markers.
TARGET = {**default_environment(), "python_version": "3.11", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "implementation_name": "cpython"}


def needs_uv(locks):
    if locks.find_uv() is None:
        pytest.skip("uv is not installed (ptqflow's dev extra has it)")


def copy_of(locks, spec, tmp_path, edit=lambda text: text):
    """``spec`` reading its file from an (edited) copy in ``tmp_path``."""
    path = tmp_path / "copy" / spec.lock.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(edit(spec.lock.read_text()))
    return dataclasses.replace(spec, file=str(path))


def test_every_file_matches_pyproject_and_records_its_cutoff(locks):
    assert sorted(locks.IMAGES) == sorted(IMAGE_NAMES)
    assert sorted(locks.ENVS) == sorted(ENV_NAMES)
    for spec in locks.ALL.values():
        assert locks.stale(spec) is None, f"{locks.stale(spec)}: run `make locks`"
        assert locks.AS_OF_FORMAT.match(locks.recorded_as_of(spec.lock)), spec.name
    assert locks.main(["check", "--offline"]) == 0


def test_a_pyproject_change_makes_the_files_stale(locks, tmp_path):
    pyproject = tmp_path / "pyproject.toml"
    original = (ROOT / "pyproject.toml").read_text()
    as_of = {n: locks.recorded_as_of(s.lock) for n, s in locks.ALL.items()}

    def digests():
        return {n: locks.digest(s, as_of[n], pyproject) for n, s in locks.ALL.items()}

    def changed(old, new):
        assert old in original
        pyproject.write_text(original.replace(old, new))
        return {n for n, d in digests().items() if d != before[n]}

    pyproject.write_text(original)
    before = digests()
    assert before == {n: locks.recorded_digest(s.lock) for n, s in locks.ALL.items()}
    images_and_projects = set(IMAGE_NAMES) | PROJECT_ENVS
    assert changed('"onnx>=1.16"', '"onnx>=1.17"') == images_and_projects
    assert changed('openvino = ["openvino>=2024.4"]', 'openvino = ["openvino>=2025.0"]') == images_and_projects
    # The dev extra only the environments use, Airflow's extra, and the setuptools that builds ptqflow.
    assert changed('"pytest>=8"', '"pytest>=9"') == PROJECT_ENVS
    assert changed('"apache-airflow==3.3.2"', '"apache-airflow==3.3.3"') == {"airflow"}
    assert changed('requires = ["setuptools>=68"]', 'requires = ["setuptools>=70"]') == PROJECT_ENVS


@pytest.mark.parametrize("name", ("cpu", "kfp"))
def test_an_edit_by_hand_makes_a_file_stale(locks, name, tmp_path):
    spec = locks.ALL[name]
    pin = re.search(r"(?m)^[A-Za-z0-9][\w.-]*==[^\s\\]+", locks.split_header(spec.lock)[1]).group(0)
    assert locks.stale(copy_of(locks, spec, tmp_path)) is None
    edited = copy_of(locks, spec, tmp_path, lambda text: text.replace(f"\n{pin}", f"\n{pin}.post1", 1))
    assert "edited after `make locks`" in locks.stale(edited)
    moved = copy_of(locks, spec, tmp_path, lambda text: text.replace(
        f"{locks.AS_OF_PREFIX}{locks.recorded_as_of(spec.lock)}", f"{locks.AS_OF_PREFIX}2030-01-01T00:00:00Z"))
    assert "other inputs" in locks.stale(moved)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_pins_satisfy_pyproject_ranges(locks, name):
    spec = locks.ALL[name]
    pins = locks.pins(spec.lock)
    replaced = {locks.normalize(old) for old in spec.replace}
    wanted = [Requirement(r) for r in locks.requirements(spec) + locks.additions(spec)]
    assert wanted, name
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


def entries(locks, lock):
    """The blocks of a file's body, one per pinned distribution."""
    blocks = re.split(r"(?m)^(?=[A-Za-z0-9])", locks.split_header(lock)[1])
    return [b for b in blocks if b.strip()]


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_every_image_pin_is_exact_and_hashed(locks, name):
    lock = locks.IMAGES[name].lock
    found = entries(locks, lock)
    assert len(found) == len(locks.pins(lock)) > 10
    for block in found:
        assert re.match(r"^[A-Za-z0-9][\w.-]*(\[[^\]]*\])?==\S+ \\\n", block), block.splitlines()[0]
        assert "--hash=sha256:" in block, block.splitlines()[0]


@pytest.mark.parametrize("name", ENV_NAMES)
def test_constraints_are_plain_pins_pip_can_use(locks, name):
    """pip's -c takes name==version lines: no hashes (they would put the editable ptqflow under
    --require-hashes), no ptqflow itself; pip is pinned, and so is setuptools where pip builds ptqflow."""
    lock = locks.ENVS[name].lock
    found = entries(locks, lock)
    assert len(found) == len(locks.pins(lock)) > (1 if locks.ENVS[name].no_deps else 10)  # no_deps: pip + wheels
    for block in found:
        assert re.match(r"^[A-Za-z0-9][\w.-]*==\S+\n", block), block.splitlines()[0]
    pins = locks.pins(lock)
    assert "ptqflow" not in pins and "--hash" not in lock.read_text()
    assert "pip" in pins
    assert ("setuptools" in pins) == (name in PROJECT_ENVS)


def test_airflow_and_kfp_have_their_own_kubernetes_client(locks):
    airflow, kfp = (locks.pins(locks.ENVS[n].lock)["kubernetes"] for n in ("airflow", "kfp"))
    assert airflow != kfp
    assert int(kfp.split(".")[0]) < 31, "kfp 2.17 wants kubernetes<31"


# Which constraints each script installs with, and into what.
SCRIPTS = {"test.sh": {"dev", "test-models"}, "test_hooks.sh": {"dev", "mlflow-server"}, "test_airflow.sh": {"airflow"},
           "test_kfp.sh": {"kfp"}, "demo.sh": {"dev"}}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_script_installs_through_its_constraints(locks, script):
    text = (ROOT / "scripts" / script).read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not [line for line in code if "pip install" in line], "install with install_env (its constraints)"
    calls = re.findall(r'install_env "\$\w+" ([\w-]+) (.*)', text)
    assert {env for env, _ in calls} == SCRIPTS[script]
    for env, args in calls:
        for extras in re.findall(r'\.\[([\w,-]+)\]', args):
            assert set(extras.split(",")) <= set(locks.ENVS[env].extras), f"{script}: {env} lacks extras {extras}"
    helper = (ROOT / "scripts" / "install_env.sh").read_text()
    assert '-c "$constraints" -U pip' in helper
    assert '-c "$constraints" \\\n    --build-constraint "$constraints"' in helper


def differences(locks, committed, fresh):
    """How a re-resolution differs from a committed file: changed pins, and committed hashes the index does not
    serve for that version as of the cutoff."""
    old, new = locks.pins(committed), locks.pins(fresh)
    found = [f"{n}: {old.get(n)} -> {new.get(n)}" for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)]
    new_hashes = locks.hashes(fresh)
    found += [f"{n}=={old[n]}: hash not on the index as of the cutoff" for n, h in locks.hashes(committed).items()
              if n in new and old[n] == new[n] and not h <= new_hashes.get(n, set())]
    return found


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL_NAMES)
def test_resolving_again_gives_the_committed_pins(locks, name, tmp_path):
    """What `make locks` writes: same inputs, as of the recorded cutoff, starting from the committed pins (uv,
    package index). A release dated after the cutoff is no candidate; one the index serves later with an earlier
    date (or published today) does not displace a pin that still fits; `make check-locks` lists them."""
    needs_uv(locks)
    spec = locks.ALL[name]
    fresh = locks.compile_lock(spec, tmp_path / name / spec.lock.name)
    assert differences(locks, spec.lock, fresh) == [], f"{name}: run `make locks`"
    assert locks.recorded_as_of(fresh) == locks.recorded_as_of(spec.lock)
    assert locks.recorded_digest(fresh) == locks.recorded_digest(spec.lock)
    assert locks.recorded_pins_digest(fresh) == locks.body_digest(fresh)


@pytest.mark.slow
def test_resolving_again_does_not_keep_a_pin_changed_by_hand(locks, tmp_path):
    """The test above can fail: a version that no file of the index carries, and a hash that is not the pinned
    file's, are both replaced by what the index serves."""
    needs_uv(locks)
    spec = locks.IMAGES["cpu"]
    name, version = "onnx", locks.pins(spec.lock)["onnx"]
    bumped = copy_of(locks, spec, tmp_path, lambda text: text.replace(f"\n{name}=={version} ",
                                                                      f"\n{name}=={version}.post999 "))
    fresh = locks.compile_lock(bumped, tmp_path / "bumped.lock")
    assert differences(locks, bumped.lock, fresh) == [f"{name}: {version}.post999 -> {version}"]
    first_hash = sorted(locks.hashes(spec.lock)[name])[0]
    forged = copy_of(locks, spec, tmp_path, lambda text: text.replace(first_hash, "0" * 64))
    fresh = locks.compile_lock(forged, tmp_path / "forged.lock")
    assert differences(locks, forged.lock, fresh) == [f"{name}=={version}: hash not on the index as of the cutoff"]


@pytest.mark.slow
def test_check_lists_newer_releases_without_failing(locks, capsys):
    needs_uv(locks)
    assert locks.main(["check", "npu"]) == 0
    assert re.match(r"^npu: (up to date|.+ -> .+ \(as of now)", capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_lock_installs_on_the_image_platform_dry_run(locks, name, tmp_path):
    """Every pin has a wheel for CPython 3.11 on x86-64 Linux and the hashes are accepted (uv's dry run reads
    metadata only; the GPU lock's CUDA wheels are gigabytes, so nothing is downloaded)."""
    needs_uv(locks)
    spec = locks.IMAGES[name]
    r = subprocess.run([locks.find_uv(), "pip", "install", "--dry-run", "--no-deps", "--require-hashes",
                        "--only-binary=:all:", "-r", str(spec.lock), f"--python-version={locks.PYTHON_VERSION}",
                        f"--python-platform={locks.PLATFORM}", f"--target={tmp_path / 'target'}"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    flavour = EXPECTED[name][0]
    assert f" + {flavour}=={locks.pins(spec.lock)[flavour]}" in r.stderr + r.stdout
    assert not list(tmp_path.rglob("*.py")), "a dry run installs nothing"
