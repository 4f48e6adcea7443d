#!/usr/bin/env bash
# One call of the multi-GPU experiment job: install (once per machine), start the driver daemon (once), wait,
# and bring back a snapshot of what exists.  bash .bench/gpuF.sh WAIT_SECONDS
set -uo pipefail
if [ ! -f /tmp/installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl-eval/*.whl || exit 1
  mkdir -p /tmp/data && rm -rf /tmp/data/bank && cp -r data/bank /tmp/data/bank && touch /tmp/installed
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc; free -g | head -2
fi
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
python3 .bench/exp2.py start
python3 .bench/exp2.py wait "${1:-560}"
python3 .bench/exp2.py pack
