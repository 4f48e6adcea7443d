#!/usr/bin/env bash
# The pretraining benchmark with a teacher trained here: the small and medium kits from the source bank (side
# by side), the CLAP teacher trained on the small kit's captions (400 steps x 64), then ViT-B SupMAM-CLAP with
# it on the medium corpus (`python -m training.bench.pretrain`, 300 steps x 64).
#
#   DEADLINE=580 bash results/gpu/scripts/bench_pretrain_trained_teacher.sh   # environment: common.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p "$WORK/runs"
"${MAMCLAP[@]}" data build --size small --workers 6 > "$WORK/small_build.log" 2>&1 &
SMALL=$!
"${MAMCLAP[@]}" data build --size medium --workers 10 > "$WORK/medium_build.log" 2>&1 &
MEDIUM=$!
wait $SMALL; echo "small built rc=$? $(elapsed)"
"${MAMCLAP[@]}" teacher train --data "$MAMCLAP_DATA/kit-small-s0/corpus" \
  --caption-embeddings "$(captions "$MAMCLAP_DATA/kit-small-s0/corpus")" \
  --steps 400 --batch-size 64 --workers 6 --out-dir "$WORK/runs/clap" > "$WORK/clap.log" 2>&1
echo "teacher rc=$? $(elapsed)"
tail -c 2500 "$WORK/clap.log" | tr '\r' '\n' | tail -30 > "$OUT/clap_train.log"
cp "$WORK/runs/clap/metrics.json" "$OUT/clap_metrics.json"; cp "$WORK/runs/clap/log.jsonl" "$OUT/clap_log.jsonl"
wait $MEDIUM; echo "medium built rc=$? $(elapsed)"
by_deadline "$PYTHON" -m training.bench.pretrain --data "$MAMCLAP_DATA/kit-medium-s0/corpus" \
  --preset supmam_clap --size base --teacher "$WORK/runs/clap/clap.pt" --steps 300 --batch-size 64 --workers 12 \
  --out-dir "$WORK/runs/supmam_clap" --json "$OUT/bench_pretrain_trained_teacher.json" > "$WORK/bench.log" 2>&1
echo "pretrain rc=$? $(elapsed)"
tail -c 2000 "$WORK/bench.log" | tr '\r' '\n' | tail -25 > "$OUT/pretrain.log"
cp "$WORK/runs/supmam_clap/log.jsonl" "$OUT/supmam_clap_log.jsonl"
cp "$WORK/runs/supmam_clap/loss.png" "$OUT/supmam_clap_loss.png"
echo "== end $(elapsed)"
