#!/usr/bin/env bash
# One call of the fine-tuning runs (finetune_driver.py): start the driver daemon unless it runs, wait for it up
# to WAIT_SECONDS, and pack what exists into $OUT. Call it again while the machine stays up: the daemon works on.
#
#   WHEELS=".whl .whl-eval" bash results/gpu/scripts/finetune.sh [WAIT_SECONDS]   # default 540; carry data/bank
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DRIVER=results/gpu/scripts/finetune_driver.py
export EXP_WORK="${EXP_WORK:-$WORK/finetune}"
"$PYTHON" "$DRIVER" start
"$PYTHON" "$DRIVER" wait "${1:-540}"
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
"$PYTHON" "$DRIVER" pack
