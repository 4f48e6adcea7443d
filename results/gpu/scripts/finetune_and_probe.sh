#!/usr/bin/env bash
# The first call of a fine-tuning session: the medium kit with its fine-tuning layouts is built on the CPUs while
# pretrain_speed_probe.sh has the GPU to itself; the fine-tuning daemon (finetune_driver.py) starts when both
# have finished, in a session of its own, so it outlives this call. Later calls: finetune.sh (after copying the
# release to $RELEASE when it did not travel with this call: its jobs wait for it, the from-scratch ones do not).
#
#   WHEELS=".whl .whl-eval" RELEASE=/tmp/ft/release WORK=/tmp/ft DEADLINE=560 bash results/gpu/scripts/finetune_and_probe.sh
#   # carry data/bank, .whl, .whl-eval, .bench/reference_mam_step.py
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
S=results/gpu/scripts
export EXP_WORK="${EXP_WORK:-$WORK/finetune}" CORPUS_CLIPS="${CORPUS_CLIPS:-200}"
mkdir -p "$EXP_WORK"
rm -f "$WORK/probe.done"
if [[ ! -f "$MAMCLAP_DATA/kit-medium-s0-c$CORPUS_CLIPS/finetune/stage.json" ]]; then
  setsid nohup bash -c "'$PYTHON' -m training.cli data build --size medium --corpus-clips $CORPUS_CLIPS --finetune \
    --workers 12 && while [[ ! -f '$WORK/probe.done' ]]; do sleep 5; done && '$PYTHON' $S/finetune_driver.py start" \
    > "$EXP_WORK/kit.log" 2>&1 < /dev/null &
fi
bash "$S/pretrain_speed_probe.sh"
left=$(( ${DEADLINE:-560} - ($(date +%s) - T0) - 20 ))
(( left > 0 )) && "$PYTHON" "$S/finetune_driver.py" wait "$left"
tail -c 20000 "$EXP_WORK/kit.log" > "$OUT/kit.log" 2>/dev/null
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
"$PYTHON" "$S/finetune_driver.py" pack
