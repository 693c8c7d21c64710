"""The lock file of each container image: what it resolves, how it is written, and whether it is stale.

Each image installs ptqflow's dependencies from ``containers/<image>/requirements.lock`` (``uv pip compile``
output with hashes, for CPython 3.11 on x86-64 Linux) and then ptqflow itself with ``--no-deps``. An image
resolves ``pyproject.toml``'s dependencies plus some extras, with some distributions replaced:

- cpu: extras openvino, s3, demo; opencv-python -> opencv-python-headless (the demo's OCR package needs cv2;
  the headless build has no X11/OpenGL libraries to install in a slim image).
- gpu: extras openvino, s3; onnxruntime -> onnxruntime-gpu[cuda,cudnn] (the CUDA 13 and cuDNN 9 runtime
  libraries come as nvidia-* wheels).
- npu: extras openvino, s3; onnxruntime stays the CPU build and the NPU is reached through OpenVINO.

onnxruntime, onnxruntime-gpu and onnxruntime-openvino all install the same ``onnxruntime`` package, so a
replaced distribution is removed from the resolution (an override whose marker never matches), never
installed next to its replacement.

The lock's second line records a digest of every input of the resolution (the pyproject requirements the image
uses, its replacements, target Python and platform, and the index cutoff date that makes re-resolution
reproducible), so a pyproject change the lock does not reflect is found offline.

    python containers/locks.py compile [cpu|gpu|npu ...]   # rewrite locks (needs uv and the package index)
    python containers/locks.py check                       # exit 1 naming each stale lock
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
# Packages published after this instant are ignored, so resolving again gives the same pins. Move it forward
# (and run `make locks`) to take newer releases.
EXCLUDE_NEWER = "2026-12-01T00:00:00Z"
ONNXRUNTIME_FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
DIGEST_PREFIX = "# inputs-sha256: "


@dataclass(frozen=True)
class ImageSpec:
    """One image's resolution: pyproject extras, and distributions replaced by others (old -> new)."""

    name: str
    device: str  # ptqflow's execution device (ptqflow.faces.images)
    extras: tuple[str, ...]
    replace: dict[str, str] = field(default_factory=dict)

    @property
    def lock(self) -> Path:
        """Where this image's lock file lives."""
        return ROOT / "containers" / self.name / "requirements.lock"


IMAGES = {
    "cpu": ImageSpec("cpu", "cpu", ("openvino", "s3", "demo"), {"opencv-python": "opencv-python-headless"}),
    "gpu": ImageSpec("gpu", "cuda", ("openvino", "s3"), {"onnxruntime": "onnxruntime-gpu[cuda,cudnn]"}),
    "npu": ImageSpec("npu", "npu", ("openvino", "s3")),
}


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _project(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]


def requirements(spec: ImageSpec, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The pyproject requirements ``spec`` resolves: the dependencies and those of its extras."""
    project = _project(pyproject)
    optional = project.get("optional-dependencies", {})
    missing = [e for e in spec.extras if e not in optional]
    if missing:
        raise SystemExit(f"{pyproject}: image {spec.name} wants extra(s) {', '.join(missing)}, which it lacks")
    reqs = list(project.get("dependencies", []))
    for extra in spec.extras:
        reqs += optional[extra]
    return reqs


def additions(spec: ImageSpec, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The replacement requirements, each with the version range pyproject gives what it replaces (if any)."""
    from packaging.requirements import Requirement

    ranges = {}
    for text in requirements(spec, pyproject):
        req = Requirement(text)
        ranges[normalize(req.name)] = str(req.specifier)
    return [new + ranges.get(normalize(old), "") for old, new in spec.replace.items()]


def digest(spec: ImageSpec, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """sha256 over everything the resolution of ``spec`` depends on."""
    project = _project(pyproject)
    inputs = {
        "image": spec.name,
        "requires-python": project.get("requires-python"),
        "requirements": sorted(requirements(spec, pyproject)),
        "replace": sorted(spec.replace.items()),
        "additions": additions(spec, pyproject),
        "python": PYTHON_VERSION,
        "platform": PLATFORM,
        "exclude-newer": EXCLUDE_NEWER,
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    """The inputs digest written in ``lock``'s header, or None."""
    for line in lock.read_text(encoding="utf-8").splitlines()[:10]:
        if line.startswith(DIGEST_PREFIX):
            return line[len(DIGEST_PREFIX):].strip()
    return None


def pins(lock: Path) -> dict[str, str]:
    """{normalized distribution name: pinned version} of a lock file."""
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            found[normalize(m.group(1))] = m.group(3)
    return found


def uv_command(spec: ImageSpec, work: Path, output: Path) -> list[str]:
    """The ``uv pip compile`` command line writing ``spec``'s lock to ``output``; it reads the additions from
    standard input (so no temporary path shows in the lock) and the overrides from a file in ``work``."""
    overrides = work / "overrides.txt"
    # A marker that never matches drops the replaced distribution from the resolution entirely.
    overrides.write_text("".join(f'{old} ; sys_platform == "never"\n' for old in spec.replace), encoding="utf-8")
    return [_uv(), "pip", "compile", "pyproject.toml", "-", *(f"--extra={e}" for e in spec.extras),
            f"--override={overrides}", f"--python-version={PYTHON_VERSION}", f"--python-platform={PLATFORM}",
            f"--exclude-newer={EXCLUDE_NEWER}", "--generate-hashes", "--only-binary=:all:", "--no-header", "--quiet",
            f"--output-file={output}"]


def find_uv() -> str | None:
    """The uv executable on PATH or next to this Python, or None."""
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    return found if Path(found).exists() else None


def _uv() -> str:
    found = find_uv()
    if found is None:
        raise SystemExit("uv not found: pip install uv (it is in ptqflow's dev extra)")
    return found


def compile_lock(spec: ImageSpec, output: Path | None = None) -> Path:
    """Resolve ``spec`` with uv and write its lock (to ``output``, default the committed location)."""
    output = output or spec.lock
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"ptqflow-lock-{spec.name}-") as work:
        body = Path(work) / "requirements.lock"
        subprocess.run(uv_command(spec, Path(work), body), cwd=ROOT, check=True, text=True,
                       input="".join(f"{r}\n" for r in additions(spec)))
        header = (f"# ptqflow container image lock: {spec.name} (execution device {spec.device})\n"
                  f"{DIGEST_PREFIX}{digest(spec)}\n"
                  f"# Written by `make locks` (python containers/locks.py compile {spec.name}); do not edit.\n"
                  f"# Resolved for CPython {PYTHON_VERSION} on {PLATFORM}, extras {','.join(spec.extras)}, "
                  f"index cutoff {EXCLUDE_NEWER}.\n")
        output.write_text(header + body.read_text(encoding="utf-8"), encoding="utf-8")
    return output


def stale(spec: ImageSpec) -> str | None:
    """Why ``spec``'s committed lock does not match pyproject.toml, or None when it does."""
    if not spec.lock.exists():
        return f"{spec.lock.relative_to(ROOT)} is missing"
    if recorded_digest(spec.lock) != digest(spec):
        return (f"{spec.lock.relative_to(ROOT)} was resolved from other inputs than pyproject.toml and "
                "containers/locks.py now give")
    return None


def main(argv: list[str]) -> int:
    """``compile [image ...]`` or ``check``; returns the exit code."""
    if not argv or argv[0] not in ("compile", "check"):
        print(__doc__.rsplit("\n\n", 1)[-1], file=sys.stderr)
        return 2
    names = argv[1:] or list(IMAGES)
    unknown = [n for n in names if n not in IMAGES]
    if unknown:
        print(f"unknown image(s) {', '.join(unknown)}; expected {', '.join(IMAGES)}", file=sys.stderr)
        return 2
    if argv[0] == "compile":
        for name in names:
            print(f"wrote {compile_lock(IMAGES[name]).relative_to(ROOT)}")
        return 0
    problems = [p for p in (stale(IMAGES[n]) for n in names) if p]
    for problem in problems:
        print(f"stale: {problem}; run `make locks`", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
