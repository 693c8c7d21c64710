#!/usr/bin/env bash
# One command for the whole benchmark: bench/run.sh [--quick] [--models cls,rec] [--methods ...]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
[ -x "$HERE/.venv/bin/python" ] || bash "$HERE/setup.sh"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$HERE/.venv/bin/python" "$HERE/run.py" "$@"
