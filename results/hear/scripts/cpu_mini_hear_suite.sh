#!/usr/bin/env bash
# CPU scores on the small kit's whole mini HEAR suite (results/hear/, table results/tables/hear-small-kit):
# a trained tiny checkpoint and three baselines (log-mel, random init, torchcrepe at tiny capacity), one after
# another. heareval's default grid with 1 point (the same for every model: heareval seeds its grid shuffle)
# for the eight clip tasks; its "fast" grid for the event task (mini_dcase: frame-level training makes the
# default grid's 500 epochs take tens of minutes per point on two cores).
#
#   bash results/hear/scripts/cpu_mini_hear_suite.sh
# Environment (defaults in brackets): MAMCLAP [.venv/bin/mamclap], MAMCLAP_DATA [data], RESULTS [results/hear],
# RUNS [runs/cpu: the trained model, logs; heareval's work folders under runs/hear]. The trained model,
# when missing, is pretrained first: SupMAM, tiny preset, 600 steps x 16 on the small kit's corpus.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
M="${MAMCLAP:-.venv/bin/mamclap}"
DATA="${MAMCLAP_DATA:-data}"
T="$DATA/kit-small-s0/hear"
RESULTS="${RESULTS:-results/hear}"
RUNS="${RUNS:-runs/cpu}"
MODEL="$RUNS/supmam-tiny/encoder"
mkdir -p "$RESULTS" "$RUNS"
CLIP="mini_drum_stroke mini_esc mini_instrument_family mini_language_id mini_mixtures mini_nsynth_pitch mini_speaker_id mini_speech_commands"
if [[ ! -f "$MODEL/encoder.json" ]]; then
  $M pretrain --preset supmam --size tiny --data "$DATA/kit-small-s0/corpus" --steps 600 --batch-size 16 \
    --base-lr 0.01 --warmup-steps 30 --out-dir "$RUNS/supmam-tiny" > "$RUNS/supmam-tiny.log" 2>&1
  echo "pretrain rc=$? $(date +%T)"
fi
ev() {  # name module model-args...
  local name=$1 module=$2; shift 2
  $M hear eval --module $module "$@" --tasks-dir "$T" --name $name --tasks $CLIP --grid default --grid-points 1 \
    --out "$RESULTS/$name.small-kit.json" --work-dir "runs/hear/$name-default1" > "$RUNS/$name.log" 2>&1
  echo "$name clip tasks rc=$? $(date +%T)"
  $M hear eval --module $module "$@" --tasks-dir "$T" --name $name --tasks mini_dcase --grid fast --grid-points 1 \
    --out "$RESULTS/$name.small-kit.dcase.json" --work-dir "runs/hear/$name-dcase-fast1" > "$RUNS/$name.dcase.log" 2>&1
  echo "$name dcase rc=$? $(date +%T)"
}
date
ev supmam-tiny-cpu hear_mamclap --model "$MODEL"
ev logmel-baseline hear_mamclap.baselines.logmel
ev random-init-tiny hear_mamclap.baselines.random_init --model "$MODEL"
ev crepe-tiny hear_mamclap.baselines.crepe --model-options '{"capacity": "tiny"}'
