#!/usr/bin/env bash
# HEAR module speed on one GPU: `python -m training.bench.hear` on the base encoder, eager and compiled, with
# the yardstick's encoder inference before it when REFERENCE_SCRIPT names it (then the JSONs carry ratios).
#
#   bash results/gpu/scripts/bench_hear.sh [RESULTS_DIR]     # default $OUT; environment: common.sh
#   REFERENCE_SCRIPT=path/to/reference_mam_step.py           # optional yardstick (takes --json PATH)
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
R="${1:-$OUT}"; mkdir -p "$R"
ref=()
if [[ -n "${REFERENCE_SCRIPT:-}" ]]; then
  "$PYTHON" "$REFERENCE_SCRIPT" --json "$R/reference.json" > "$R/reference.log" 2>&1; echo "reference rc=$?"
  ref=(--reference "$R/reference.json")
fi
"$PYTHON" -m training.bench.hear --device cuda --size base --no-cpu "${ref[@]}" --json "$R/hear_eager.json" \
  > "$R/hear_eager.log" 2>&1; echo "hear eager rc=$?"
"$PYTHON" -m training.bench.hear --device cuda --size base --no-cpu --compile "${ref[@]}" --json "$R/hear_compiled.json" \
  > "$R/hear_compiled.log" 2>&1; echo "hear compiled rc=$?"
