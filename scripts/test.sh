#!/usr/bin/env bash
# Set up ptqflow's test environment from scratch (idempotent) and run the whole test suite,
# slow end-to-end tests included. Extra arguments go to pytest, e.g. `./scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PTQFLOW_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[openvino,s3,demo,dev]"

exec "$VENV/bin/python" -m pytest "$@"
