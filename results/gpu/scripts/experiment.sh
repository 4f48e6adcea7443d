#!/usr/bin/env bash
# One call of the multi-GPU experiment (results/gpu/exp2): start the driver daemon unless it runs, wait for it
# up to WAIT_SECONDS, and pack a snapshot of what exists into $OUT/exp2.tar.gz. Call it again while the
# machine stays up: the daemon keeps working between calls, and finished jobs are never redone.
#
#   bash results/gpu/scripts/experiment.sh [WAIT_SECONDS]    # default 560; environment: common.sh
#   CAPTIONS=captions_small.pt                               # the small kit's MiniLM caption embeddings,
#                                                            # when MiniLM cannot run on the machine
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
if [[ ! -f "$WORK/machine.txt" ]]; then
  { nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2; } | tee "$WORK/machine.txt"
fi
DRIVER=results/gpu/scripts/experiment_driver.py
export EXP_WORK="${EXP_WORK:-$WORK/experiment}"
"$PYTHON" "$DRIVER" start
"$PYTHON" "$DRIVER" wait "${1:-560}"
"$PYTHON" "$DRIVER" pack
