#!/usr/bin/env bash
# Set up the airflow face's environment (.venv-airflow, idempotent) and run tests/airflow.
# Extra arguments go to pytest, e.g. `./scripts/test_airflow.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install_env.sh
PY=${PYTHON:-python3}
VENV=.venv-airflow
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pip stays in the venv: kfp.local runs `python -m pip` inside each task.
install_env "$VENV" airflow -e ".[airflow,openvino,s3,dev,registry]"
# The end-to-end hook tests start an MLflow server from .venv-mlflow.
PTQFLOW_HOOKS_SETUP_ONLY=1 scripts/test_hooks.sh
exec "$VENV/bin/python" -m pytest "$@" tests/airflow
