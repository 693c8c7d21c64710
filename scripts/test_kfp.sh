#!/usr/bin/env bash
# Set up the kfp face's environment (.venv-kfp, idempotent) and run tests/kfp.
# Extra arguments go to pytest, e.g. `./scripts/test_kfp.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install_env.sh
PY=${PYTHON:-python3}
VENV=.venv-kfp
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pip stays in the venv: kfp.local runs `python -m pip` inside each task.
install_env "$VENV" kfp -e ".[kfp,openvino,s3,dev]"
exec "$VENV/bin/python" -m pytest "$@" tests/kfp
