#!/usr/bin/env bash
# Issue 14's levers not yet measured, in one job: the yardstick, then ViT-B SupMAM-CLAP (batch 256, the random
# LAION-layout teacher) on one fixed batch and from the GPU-resident cache: the global decoder (today's recipe), the
# local decoder (`decoder_attention=local`: (4, 4) windows, every second block shifted; the attention that is 30 %
# of today's step shrinks 32-fold), the same for ViT-S, and the global decoder compiled with
# `max-autotune-no-cudagraphs` (Inductor's Triton matmul templates with fused epilogues, chosen by timing; last, as
# its compilation is long). Writes $OUT/probe/{reference,pretrain_step_probe}.json and the logs; touches
# $WORK/probe.done at exit (finetune_and_probe.sh starts the fine-tuning daemon after it, so nothing else shares
# the GPU meanwhile).
#
#   WHEELS=".whl" bash results/gpu/scripts/pretrain_speed_probe.sh   # carry data/bank and .bench/reference_mam_step.py
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
trap 'touch "$WORK/probe.done"' EXIT
P="$OUT/probe"; mkdir -p "$P"
nvidia-smi --query-gpu=name,memory.used,memory.total,clocks.sm,clocks.max.sm --format=csv > "$P/gpu.txt" 2>&1
random_teacher "$WORK/clap.pt"
MAMCLAP_CACHE="$WORK/cache_probe" "${MAMCLAP[@]}" data build --size small --workers 4 > "$P/kit.log" 2>&1 || { echo "small corpus failed"; exit 1; }
by_deadline "$PYTHON" .bench/reference_mam_step.py --json "$P/reference.json" > "$P/reference.log" 2>&1
echo "reference rc=$? ($(elapsed))"
by_deadline "$PYTHON" -m training.bench.pretrain --data "$MAMCLAP_DATA/kit-small-s0/corpus" --preset supmam_clap \
  --size base --teacher "$WORK/clap.pt" --reference "$P/reference.json" --cache "$WORK/cache_small" --steps 60 \
  --batch-size 256 --workers 4 --compile --run fixed:source=fixed --run cache:source=cache \
  --run fixed_local:source=fixed,decoder_attention=local --run cache_local:source=cache,decoder_attention=local \
  --run vit_s_cache:source=cache,size=small --run vit_s_local:source=cache,size=small,decoder_attention=local \
  --run cache_autotune:source=cache,compile_mode=max-autotune-no-cudagraphs \
  --headline cache,cache_local,cache_autotune --out-dir "$WORK/probe_runs" --json "$P/pretrain_step_probe.json" \
  > "$P/bench.log" 2>&1
echo "bench rc=$? ($(elapsed))"
