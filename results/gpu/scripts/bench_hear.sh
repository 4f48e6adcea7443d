#!/usr/bin/env bash
# Issue 4's benchmark on one GPU: the yardstick's encoder inference, then the HEAR module (eager and compiled).
set -uo pipefail
R=$1; mkdir -p $R
python3 .bench/reference_mam_step.py --json $R/reference.json > $R/reference.log 2>&1; echo "reference rc=$?"
python3 -m training.bench.hear --device cuda --size base --no-cpu --reference $R/reference.json --json $R/hear_eager.json > $R/hear_eager.log 2>&1; echo "hear eager rc=$?"
python3 -m training.bench.hear --device cuda --size base --no-cpu --compile --reference $R/reference.json --json $R/hear_compiled.json > $R/hear_compiled.log 2>&1; echo "hear compiled rc=$?"
