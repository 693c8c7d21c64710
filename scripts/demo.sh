#!/usr/bin/env bash
# Set up ptqflow (idempotent) and run the whole pipeline on the embedded default: the PP-OCR text-direction
# classifier bundled in the rapidocr-onnxruntime package, calibrated and validated on text-line images
# rendered on this machine, all artifacts in ./ptqflow-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PTQFLOW_VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[openvino,demo]"

exec "$VENV/bin/ptqflow" demo --output "${1:-ptqflow-demo}"
