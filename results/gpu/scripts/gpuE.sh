#!/usr/bin/env bash
# GPU experiment (issue 6.3): kits from the carried bank, CLAP teacher, 12 ViT-S pretraining runs on the medium
# corpus, HEAR (small kit mini suite) and SUPERB (medium layouts) evaluations; resumable while the machine is warm.
set -uo pipefail
if [ ! -f /tmp/work/installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl .whl-eval/*.whl || exit 1
  mkdir -p /tmp/data /tmp/work && rm -rf /tmp/data/bank && cp -r data/bank /tmp/data/bank && touch /tmp/work/installed
fi
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 .bench/exp.py "${1:-540}"
