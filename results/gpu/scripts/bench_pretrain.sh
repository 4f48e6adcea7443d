#!/usr/bin/env bash
# The pretraining step end to end on one GPU: the medium kit built from the source bank (timed, its log,
# `data show` and manifest brought back), then `python -m training.bench.pretrain` (ViT-B SupMAM-CLAP with a
# random LAION-layout HTS-AT-tiny teacher, 300 steps x 64) on its corpus.
#
#   DEADLINE=570 bash results/gpu/scripts/bench_pretrain.sh     # environment: common.sh
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
mkdir -p "$WORK/runs"
random_teacher "$WORK/random_clap.pt" &
echo "== medium build $(elapsed)"
by_deadline /usr/bin/time -v "${MAMCLAP[@]}" data build --size medium --workers 16 \
  > "$WORK/medium_build.log" 2>&1
echo "build rc=$? $(elapsed)"
tail -c 4000 "$WORK/medium_build.log" | tr '\r' '\n' | tail -45 > "$OUT/medium_build.log"
"${MAMCLAP[@]}" data show --size medium > "$OUT/medium_show.txt" 2>&1
cp "$MAMCLAP_DATA/kit-medium-s0/manifest.json" "$OUT/medium_manifest.json" 2>/dev/null
wait
echo "== pretrain bench $(elapsed)"
if [[ -f "$MAMCLAP_DATA/kit-medium-s0/corpus/corpus.json" ]]; then
  by_deadline "$PYTHON" -m training.bench.pretrain --data "$MAMCLAP_DATA/kit-medium-s0/corpus" \
    --preset supmam_clap --size base --teacher "$WORK/random_clap.pt" --steps 300 --batch-size 64 --workers 12 \
    --out-dir "$WORK/runs/bench" --json "$OUT/bench_pretrain.json" > "$WORK/bench_pretrain.log" 2>&1
  echo "bench rc=$? $(elapsed)"
fi
tail -c 3000 "$WORK/bench_pretrain.log" | tr '\r' '\n' | tail -40 > "$OUT/bench_pretrain.log"
cp "$WORK/runs/bench/log.jsonl" "$OUT/bench_log.jsonl"; cp "$WORK/runs/bench/loss.png" "$OUT/bench_loss.png"
echo "== end $(elapsed)"
