#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): run from the repository root on a machine with one
# CUDA GPU and torch >= 2.11 + transformers >= 5.17 already installed; nothing is downloaded.
# Under 8 minutes on an H200. The log goes to stdout and, when $OUT is set, to $OUT/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="${OUT:-/tmp}/gpu_check.log"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 python3 benchmarks/gpu_check.py "$@" 2>&1 | tee "$log"
