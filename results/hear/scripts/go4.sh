#!/usr/bin/env bash
# After the trained model's event task: the log-mel and random-init baselines on the eight clip tasks.
set -uo pipefail
cd /work/main
while ! grep -q "supmam-tiny-cpu dcase" runs/cpu/go3.log; do sleep 5; done
pkill -f runs/cpu/go3.sh; sleep 1; pkill -f "logmel-baseline"; sleep 2
rm -rf runs/hear/logmel-baseline-default1 runs/hear/logmel-baseline-dcase-fast1
M=.venv/bin/mamclap
T=data/kit-small-s0/hear
CLIP="mini_drum_stroke mini_esc mini_instrument_family mini_language_id mini_mixtures mini_nsynth_pitch mini_speaker_id mini_speech_commands"
$M hear eval --module hear_mamclap.baselines.logmel --tasks-dir $T --name logmel-baseline --tasks $CLIP --grid default --grid-points 1 \
  --out results/hear/logmel-baseline.small-kit.json --work-dir runs/hear/logmel-baseline-default1 > runs/cpu/logmel-baseline.log 2>&1; echo "logmel rc=$? $(date +%T)"
$M hear eval --module hear_mamclap.baselines.random_init --model runs/cpu/supmam-tiny/encoder --tasks-dir $T --name random-init-tiny --tasks $CLIP --grid default --grid-points 1 \
  --out results/hear/random-init-tiny.small-kit.json --work-dir runs/hear/random-init-tiny-default1 > runs/cpu/random-init-tiny.log 2>&1; echo "random rc=$? $(date +%T)"
