import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for extra in (ROOT / "tests", ROOT / "components"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import os
import shutil
import tempfile

# Airflow reads its home at import: keep its config and SQLite DB out of ~/airflow, in a directory of this
# session's own that goes when the session ends (pytest_unconfigure below).
_HOME = None
if "AIRFLOW_HOME" not in os.environ:
    os.environ["AIRFLOW_HOME"] = _HOME = tempfile.mkdtemp(prefix="ptqflow-airflow-home-")
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


# --- Shared by the slow REST and hook end-to-end tests: one S3 server and one Airflow for the session ---

for extra in (ROOT / "tests" / "hooks", Path(__file__).resolve().parent):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import pytest  # noqa: E402

from tiny_run import BUCKET, DAG_ID, seed_bucket  # noqa: E402


@pytest.fixture(scope="session")
def rest_s3(tmp_path_factory):
    """A moto S3 server on loopback with the tiny classifier at in/model.onnx and 24 samples under in/data/;
    yields (endpoint, boto3 client, local model path)."""
    import boto3

    from s3server import moto_server, s3_env

    tmp = tmp_path_factory.mktemp("rest-s3")
    with moto_server() as endpoint:
        env = s3_env(endpoint)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                              aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        model = seed_bucket(client, BUCKET, tmp)
        yield endpoint, client, model


@pytest.fixture(scope="session")
def airflow_rest(rest_s3, tmp_path_factory):
    """A real Airflow on loopback (api-server, scheduler, dag-processor) whose workers see the S3 server,
    with the ptqflow DAG parsed and unpaused."""
    from airflow_server import airflow_server, wait_dag
    from s3server import s3_env

    with airflow_server(tmp_path_factory.mktemp("airflow"), env=s3_env(rest_s3[0])) as af:
        wait_dag(af, DAG_ID)
        af.unpause(DAG_ID)
        yield af


@pytest.fixture
def kubeconfig(tmp_path, monkeypatch):
    """A kubeconfig pointing at a loopback API server that is never contacted (pod rendering reads it)."""
    path = tmp_path / "kubeconfig"
    path.write_text("""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: dummy}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: ptqflow}}]
current-context: x
""")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path


def pytest_unconfigure(config):
    """Remove this session's Airflow home; an atexit handler would not run, tests/conftest.py ends the process
    with os._exit after the last unconfigure hook."""
    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)
