#!/usr/bin/env bash
# GPU call 3: kits (small + medium) from the carried bank, CLAP teacher trained on the small kit's captions
# (MiniLM embeddings carried from the CPU machine), then ViT-B SupMAM-CLAP on the medium corpus with it.
set -uo pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache
mkdir -p /tmp/data /tmp/runs && rm -rf /tmp/data/bank && cp -r data/bank /tmp/data/bank
python3 -m training.cli data build --size small --workers 6 > /tmp/small_build.log 2>&1 &
SMALL=$!
python3 -m training.cli data build --size medium --workers 10 > /tmp/medium_build.log 2>&1 &
MEDIUM=$!
wait $SMALL; echo "small built rc=$? $(($(date +%s)-T0))s"
python3 -m training.cli teacher train --data /tmp/data/kit-small-s0/corpus --caption-embeddings .bench/captions_small.pt \
  --steps 400 --batch-size 64 --workers 6 --out-dir /tmp/runs/clap > /tmp/clap.log 2>&1
echo "teacher rc=$? $(($(date +%s)-T0))s"
tail -c 2500 /tmp/clap.log | tr '\r' '\n' | tail -30 > $OUT/clap_train.log
cp /tmp/runs/clap/metrics.json $OUT/clap_metrics.json; cp /tmp/runs/clap/log.jsonl $OUT/clap_log.jsonl
wait $MEDIUM; echo "medium built rc=$? $(($(date +%s)-T0))s"
LEFT=$((580-($(date +%s)-T0)))
timeout $LEFT python3 -m training.bench.pretrain --data /tmp/data/kit-medium-s0/corpus --preset supmam_clap --size base \
  --teacher /tmp/runs/clap/clap.pt --steps 300 --batch-size 64 --workers 12 --out-dir /tmp/runs/supmam_clap \
  --json $OUT/bench_pretrain_trained_teacher.json > /tmp/bench.log 2>&1
echo "pretrain rc=$? $(($(date +%s)-T0))s"
tail -c 2000 /tmp/bench.log | tr '\r' '\n' | tail -25 > $OUT/pretrain.log
cp /tmp/runs/supmam_clap/log.jsonl $OUT/supmam_clap_log.jsonl; cp /tmp/runs/supmam_clap/loss.png $OUT/supmam_clap_loss.png
echo "== end $(($(date +%s)-T0))s"
