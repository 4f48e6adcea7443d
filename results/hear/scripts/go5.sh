#!/usr/bin/env bash
# The event task (mini_dcase, heareval "fast" grid, 1 point: the same setting as the trained tiny model's)
# for the three baselines, one after another on CPU.
set -uo pipefail
cd /work/main
M=.venv/bin/mamclap
T=data/kit-small-s0/hear
dc() {  # name module model-args...
  local name=$1 module=$2; shift 2
  $M hear eval --module $module "$@" --tasks-dir $T --name $name --tasks mini_dcase --grid fast --grid-points 1 \
    --out results/hear/$name.small-kit.dcase.json --work-dir runs/hear/$name-dcase-fast1 > runs/cpu/$name.dcase.log 2>&1; echo "$name dcase rc=$? $(date +%T)"
}
date
dc logmel-baseline hear_mamclap.baselines.logmel
dc random-init-tiny hear_mamclap.baselines.random_init --model runs/cpu/supmam-tiny/encoder
dc crepe-tiny hear_mamclap.baselines.crepe --model-options '{"capacity": "tiny"}'
