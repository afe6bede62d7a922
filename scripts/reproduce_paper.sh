#!/usr/bin/env bash
# Reproduce the paper's table (all methods x seeds -> evaluation -> table and curves); resumable.
#   bash scripts/reproduce_paper.sh [--pairs a,b] [--seeds 1,2,3] [--steps N] [--ablations]
#                                   [--stage all|train|eval|tables|after-train] [--nodes N] [--dry-run]
#                                   [--sweep KEY=V1,V2,...] [--allow-missing] [-- overrides]
# See scripts/reproduce_paper.py (--help) for the stages and where their output goes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${CODISTILL_PYTHON:-$root/.venv/bin/python}"
[[ -x "$py" ]] || py="$(command -v python3)" || { echo "[reproduce] error: no python: run 'bash scripts/setup.sh'" >&2; exit 2; }
export CODISTILL_OUTPUT_DIR="${CODISTILL_OUTPUT_DIR:-$root/outputs}" CODISTILL_DATA_DIR="${CODISTILL_DATA_DIR:-$root/data}"
exec "$py" scripts/reproduce_paper.py "$@"
