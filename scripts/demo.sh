#!/usr/bin/env bash
# Set up ptqflow (idempotent) and run the whole pipeline on the embedded default: the PP-OCR text recognizer
# bundled in the rapidocr-onnxruntime package, calibrated and validated on text-line images rendered on this
# machine, all artifacts in ./ptqflow-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/install_env.sh
PY=${PYTHON:-python3}
VENV=${PTQFLOW_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# The versions the test suite runs with (scripts/constraints/dev.txt).
install_env "$VENV" dev -e ".[openvino,demo]"

exec "$VENV/bin/ptqflow" demo --output "${1:-ptqflow-demo}"
