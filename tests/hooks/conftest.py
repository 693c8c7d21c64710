import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for extra in (HERE, HERE.parent):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import pytest  # noqa: E402

from mlflow_server import mlflow_server  # noqa: E402


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory):
    """A real MLflow server on loopback shared by the hook tests (each test uses its own model names)."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture()
def mlflow_client(mlflow_url, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    return MlflowClient(mlflow_url)
