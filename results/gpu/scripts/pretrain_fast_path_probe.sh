#!/usr/bin/env bash
# The fast path, first H200 call: the yardstick, attention kernels, the fast path's ladder, a profile.
# From the repository root, with .bench/speed (this branch's tree), .bench/reference_mam_step.py, .whl and
# data/bank carried.
set -uo pipefail
T0=$(date +%s); ROOT=$PWD; S=$ROOT/.bench/speed
el() { echo "[$(($(date +%s)-T0))s] $*"; }
left() { echo $(( $1 - ($(date +%s)-T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$S USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache
mkdir -p /tmp/data && cp -r data/bank /tmp/data/bank
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv > $OUT/gpu.txt; nproc >> $OUT/gpu.txt
cd $S
python3 -m training.cli data build --size small --workers 14 > /tmp/small.log 2>&1 &
KIT=$!
python3 $ROOT/.bench/reference_mam_step.py --json $OUT/reference.json > $OUT/reference.log 2>&1; el "reference rc=$?"
python3 results/gpu/scripts/pretrain_step_profile.py attention > $OUT/attention.txt 2>&1; el "attention rc=$?"
python3 -m training.cli teacher init --out /tmp/clap.pt > /tmp/teacher.log 2>&1; el "teacher rc=$?"
wait $KIT; el "kit rc=$?"; tail -2 /tmp/small.log
C=/tmp/data/kit-small-s0/corpus
timeout $(left 490) python3 -m training.bench.pretrain --data $C --teacher /tmp/clap.pt --reference $OUT/reference.json \
  --cache /tmp/cache_small --steps 60 --batch-size 256 --workers 12 \
  --run cache:source=cache --run fixed:source=fixed --run teacher_cache:source=teacher_cache --run online:source=online \
  --run cudnn:source=cache,attention=cudnn --run vit_s:source=cache,size=small --run mam:source=cache,preset=mam \
  --headline cache --out-dir /tmp/r --json $OUT/ladder.json > $OUT/ladder.log 2>&1; el "ladder rc=$?"
timeout $(left 575) python3 results/gpu/scripts/pretrain_step_profile.py step base > $OUT/profile.txt 2>&1; el "profile rc=$?"
el end
