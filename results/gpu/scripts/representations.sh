#!/usr/bin/env bash
# One call of the representations experiment (results/gpu/representations): start the driver daemon unless it
# runs, wait for it up to WAIT_SECONDS, and pack what exists into $OUT (a tarball, plus the release encoder's
# weight shards once exported). Call it again while the machine stays up: the daemon works on between calls.
#
#   WHEELS=".whl .whl-eval" bash results/gpu/scripts/representations.sh [WAIT_SECONDS]   # default 540
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ ! -f "$WORK/machine.txt" ]]; then
  { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2; } | tee "$WORK/machine.txt"
fi
DRIVER=results/gpu/scripts/representations_driver.py
export EXP_WORK="${EXP_WORK:-$WORK/representations}"
"$PYTHON" "$DRIVER" start
"$PYTHON" "$DRIVER" wait "${1:-540}"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
"$PYTHON" "$DRIVER" pack
