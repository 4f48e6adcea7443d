#!/usr/bin/env bash
# The pretraining fast-path ladder, one H200 call: the yardstick, main's step as it was (before), and this branch's ladder
# (online -> cached teacher -> everything cached on the GPU; CUDA graphs; the fixed-batch rate; ViT-S, MAM),
# all in one job. From the repository root (main's tree), with .bench/speed (this branch), 
# .bench/reference_mam_step.py, .whl and data/bank carried.
set -uo pipefail
T0=$(date +%s); ROOT=$PWD; S=$ROOT/.bench/speed
el() { echo "[$(($(date +%s)-T0))s] $*"; }
left() { echo $(( $1 - ($(date +%s)-T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TQDM_DISABLE=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache
mkdir -p /tmp/data && cp -r data/bank /tmp/data/bank
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv > $OUT/gpu.txt; nproc >> $OUT/gpu.txt
cd $S; export PYTHONPATH=/tmp/site:$S
python3 -m training.cli data build --size small --workers 14 > /tmp/small.log 2>&1 &
KIT=$!
python3 -m training.cli teacher init --out /tmp/clap.pt > /tmp/teacher.log 2>&1 &
TEA=$!
python3 $ROOT/.bench/reference_mam_step.py --json $OUT/reference.json > $OUT/reference.log 2>&1; el "reference rc=$?"
wait $TEA; el "teacher rc=$?"; wait $KIT; el "kit rc=$?"
C=/tmp/data/kit-small-s0/corpus
# before: main's code (the repository root), online teacher and loader, compiled, B=256
(cd $ROOT && PYTHONPATH=/tmp/site:$ROOT timeout 130 python3 -m training.bench.pretrain --data $C --preset supmam_clap \
  --size base --teacher /tmp/clap.pt --steps 60 --batch-size 256 --workers 12 --compile --out-dir /tmp/rb \
  --json $OUT/baseline_main.json > $OUT/baseline_main.log 2>&1); el "baseline rc=$?"
timeout $(left 560) python3 -m training.bench.pretrain --data $C --teacher /tmp/clap.pt --reference $OUT/reference.json \
  --cache /tmp/cache_small --steps 60 --batch-size 256 --workers 12 \
  --run cache:source=cache --run cache_cudagraphs:source=cache,compile_mode=reduce-overhead \
  --run fixed:source=fixed --run fixed_cudagraphs:source=fixed,compile_mode=reduce-overhead \
  --run teacher_cache:source=teacher_cache --run online:source=online \
  --run vit_s:source=cache,size=small --run vit_s_fixed:source=fixed,size=small \
  --run vit_s_online:source=online,size=small --run mam:source=cache,preset=mam \
  --headline cache,cache_cudagraphs --out-dir /tmp/r --json $OUT/pretrain_step.json > $OUT/bench.log 2>&1
el "bench rc=$?"
el end
