#!/usr/bin/env bash
# Set up the model-registry hooks' test environments (idempotent) and run tests/hooks.
# Extra arguments go to pytest, e.g. `./scripts/test_hooks.sh -m "not slow"`.
#
# The MLflow *server* the tests start lives in its own environment (.venv-mlflow, mlflow==3.17.2, ~850 MB,
# exactly the packages of scripts/constraints/mlflow-server.txt); ptqflow's client side is the light `registry`
# extra (mlflow-skinny) installed into the library's .venv.
# PTQFLOW_HOOKS_SETUP_ONLY=1 only prepares .venv-mlflow (scripts/test_airflow.sh uses it for the
# end-to-end hook tests).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install_env.sh
PY=${PYTHON:-python3}
MLFLOW_VENV=.venv-mlflow
# Installed again only when the constraints changed since (a copy of them marks what the venv holds).
if ! cmp -s scripts/constraints/mlflow-server.txt "$MLFLOW_VENV/constraints.txt"; then
  if [ ! -x "$MLFLOW_VENV/bin/python" ]; then
    "$PY" -m venv "$MLFLOW_VENV"
  fi
  install_env "$MLFLOW_VENV" mlflow-server -r scripts/constraints/mlflow-server.txt
  cp scripts/constraints/mlflow-server.txt "$MLFLOW_VENV/constraints.txt"
fi
if [ "${PTQFLOW_HOOKS_SETUP_ONLY:-0}" = 1 ]; then
  exit 0
fi
VENV=${PTQFLOW_VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
install_env "$VENV" dev -e ".[openvino,s3,dev,registry]"
exec "$VENV/bin/python" -m pytest "$@" tests/hooks
