"""Building and running ptqflow's images from the tests: with a Docker engine, or with buildah (chroot
isolation) where no daemon answers, as scripts/build_image.sh does. Each run starts a fresh container from the
image, as a pod would, and removes it afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass

from container_support import ROOT

# What buildah needs here: buildah itself, podman to import the fallback base image, mmdebstrap to make it.
BUILDAH_PACKAGES = ("podman", "buildah", "mmdebstrap")


def _run(cmd: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@dataclass(frozen=True)
class Mount:
    """A host directory bound into the container."""

    host: str
    container: str


class Engine:
    """One of the two builders; ``name`` is what scripts/build_image.sh takes as BUILDER."""

    name = ""

    def build(self, device: str, tag: str, *options: str, timeout: float = 1200) -> float:
        """Build containers/<device>/Dockerfile as ``tag`` with scripts/build_image.sh; returns the seconds it
        took. AssertionError with the build's log tail when it fails."""
        env = {**os.environ, "BUILDER": self.name, "IMAGE": tag, "PYTHON": sys.executable}
        start = time.monotonic()
        r = _run([str(ROOT / "scripts" / "build_image.sh"), device, *options], timeout, cwd=ROOT, env=env)
        assert r.returncode == 0, f"building {tag} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
        return time.monotonic() - start

    def run(self, image: str, argv: list[str], env: dict[str, str] | None = None, workdir: str | None = None,
            mounts: tuple[Mount, ...] = (), timeout: float = 900) -> subprocess.CompletedProcess:
        """Run ``argv`` (the container's command: the image's entrypoint is not used) in a fresh container of
        ``image`` as the image's user, with ``env`` on top of the image's and ``workdir`` if given."""
        raise NotImplementedError

    def size(self, image: str) -> int:
        """The image's size in bytes as the engine reports it."""
        raise NotImplementedError

    def remove(self, image: str) -> None:
        """Remove the image (no error if it is gone)."""
        raise NotImplementedError


class Docker(Engine):
    name = "docker"

    def __init__(self, client: str = "docker"):
        self.client = client

    def run(self, image, argv, env=None, workdir=None, mounts=(), timeout=900):  # noqa: D102 (see Engine)
        cmd = [self.client, "run", "--rm", "--name", f"ptqflow-test-{uuid.uuid4().hex[:12]}",
               "--entrypoint", argv[0]]
        for key, value in (env or {}).items():
            cmd += ["--env", f"{key}={value}"]
        if workdir:
            cmd += ["--workdir", workdir]
        for m in mounts:
            cmd += ["--volume", f"{m.host}:{m.container}"]
        return _run([*cmd, image, *argv[1:]], timeout)

    def size(self, image):  # noqa: D102
        return int(_run([self.client, "image", "inspect", "--format", "{{.Size}}", image], 60).stdout.strip())

    def remove(self, image):  # noqa: D102
        _run([self.client, "image", "rm", "--force", image], 120)


class Buildah(Engine):
    name = "buildah"

    def run(self, image, argv, env=None, workdir=None, mounts=(), timeout=900):  # noqa: D102 (see Engine)
        name = f"ptqflow-test-{uuid.uuid4().hex[:12]}"
        r = _run(["buildah", "from", "--pull=never", "--name", name, image], 120)
        assert r.returncode == 0, r.stderr
        try:
            cmd = ["buildah", "run", "--isolation", "chroot"]
            for key, value in (env or {}).items():
                cmd += ["--env", f"{key}={value}"]
            if workdir:
                cmd += ["--workingdir", workdir]
            for m in mounts:
                cmd += ["--volume", f"{m.host}:{m.container}"]
            return _run([*cmd, name, "--", *argv], timeout)
        finally:
            _run(["buildah", "rm", name], 120)

    def size(self, image):  # noqa: D102
        return _buildah_size(image)

    def remove(self, image):  # noqa: D102
        _run(["buildah", "rmi", image], 120)


def _buildah_size(image: str) -> int:
    """Sum of the image's layer sizes from its manifest (buildah prints sizes only rounded, as text)."""
    import json

    r = _run(["buildah", "inspect", "--type", "image", image], 60)
    manifest = json.loads(json.loads(r.stdout)["Manifest"])
    return sum(layer["size"] for layer in manifest["layers"])


def find_engine() -> tuple[Engine | None, str]:
    """A Docker engine that answers, else buildah (installed with apt-get when this is a root Debian machine
    without it). Returns (engine, "") or (None, why there is none)."""
    docker = os.environ.get("DOCKER", "docker")
    if shutil.which(docker) and _run([docker, "info"], 60).returncode == 0:
        return Docker(docker), ""
    missing = [tool for tool in BUILDAH_PACKAGES if not shutil.which(tool)]
    root = os.geteuid() == 0
    if missing and root and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        _run(["apt-get", "update", "-qq"], 600, env=env)
        r = _run(["apt-get", "install", "-y", "-qq", *BUILDAH_PACKAGES], 900, env=env)
        if r.returncode != 0:
            return None, (f"no Docker engine answers and apt-get could not install {', '.join(missing)}: "
                          f"{r.stderr[-500:]}")
        missing = [tool for tool in BUILDAH_PACKAGES if not shutil.which(tool)]
    if "buildah" in missing:
        return None, (f"neither a Docker engine ({docker} info failed) nor buildah here, and no root apt-get to "
                      f"install it (apt-get install {' '.join(BUILDAH_PACKAGES)})")
    if not root:
        return None, "no Docker engine answers, and buildah's chroot isolation needs root here"
    return Buildah(), ""
