#!/usr/bin/env bash
# The device check (bench/device_check.py): run as is on a machine with one CUDA GPU; the summary is printed
# and written to ${OUT:-.}/device_check.json. Extra arguments go to the script (e.g. --dry-run on a CPU).
# Python: $PYTHON, else .venv/bin/python. It needs a CUDA build of torch 2.13 and the cuda extra; on a fresh
# GPU machine (about 3 minutes, not counted in the check's 8):
#   python3.11 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e '.[cuda]' pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" bench/device_check.py --out "${OUT:-.}/device_check.json" "$@"
