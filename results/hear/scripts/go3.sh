#!/usr/bin/env bash
# CPU scores for issue 4: a trained tiny checkpoint and the three baselines on the small kit's whole mini HEAR
# suite. heareval's default grid (1 point, the same for every model: heareval seeds its grid shuffle) for the eight clip tasks; its "fast" grid for the event task
# (mini_dcase: frame-level training makes the default grid's 500 epochs take tens of minutes per point here).
set -uo pipefail
cd /work/main
M=.venv/bin/mamclap
T=data/kit-small-s0/hear
CLIP="mini_drum_stroke mini_esc mini_instrument_family mini_language_id mini_mixtures mini_nsynth_pitch mini_speaker_id mini_speech_commands"
ev() {  # name module model-args...
  local name=$1 module=$2; shift 2
  $M hear eval --module $module "$@" --tasks-dir $T --name $name --tasks $CLIP --grid default --grid-points 1 \
    --out results/hear/$name.small-kit.json --work-dir runs/hear/$name-default1 > runs/cpu/$name.log 2>&1; echo "$name clip tasks rc=$? $(date +%T)"
  $M hear eval --module $module "$@" --tasks-dir $T --name $name --tasks mini_dcase --grid fast --grid-points 1 \
    --out results/hear/$name.small-kit.dcase.json --work-dir runs/hear/$name-dcase-fast1 > runs/cpu/$name.dcase.log 2>&1; echo "$name dcase rc=$? $(date +%T)"
}
date
ev supmam-tiny-cpu hear_mamclap --model runs/cpu/supmam-tiny/encoder
ev logmel-baseline hear_mamclap.baselines.logmel
ev random-init-tiny hear_mamclap.baselines.random_init --model runs/cpu/supmam-tiny/encoder
ev crepe-tiny hear_mamclap.baselines.crepe --model-options '{"capacity": "tiny"}'
