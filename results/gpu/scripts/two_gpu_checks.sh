#!/usr/bin/env bash
# Two-GPU correctness and scaling of the pretraining loop (ViT-B SupMAM-CLAP, random LAION-layout teacher,
# the small kit's corpus, built when missing): the loss per step on 2 GPUs against 1 GPU at the same global
# batch, checkpoints carried across world sizes (2 GPUs to step 60 resumed on 1, and 1 resumed on 2), and
# scaling at 64 clips per GPU with a log every 20 steps; a summary JSON of them all.
#
#   bash results/gpu/scripts/two_gpu_checks.sh [RESULTS_DIR]   # default $OUT; environment: common.sh
# The GPUs are the first two visible (CUDA_VISIBLE_DEVICES, as the experiment driver sets it).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
R="${1:-$OUT}"; S="$WORK/two_gpu_checks"; mkdir -p "$R" "$S"
nvidia-smi --query-gpu=name --format=csv,noheader > "$R/gpus.txt"
C="$MAMCLAP_DATA/kit-small-s0/corpus"
[[ -f "$C/corpus.json" ]] || "${MAMCLAP[@]}" data build --size small --workers "$(nproc)" > "$S/small_build.log" 2>&1
random_teacher "$S/clap.pt"
A=(--preset supmam_clap --size base --data "$C" --teacher "$S/clap.pt" --warmup-steps 10 --workers 8)
VISIBLE="${CUDA_VISIBLE_DEVICES:-0,1}"
TR=(env CUDA_VISIBLE_DEVICES="$VISIBLE" "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2
    -m training.cli pretrain)
P=(env CUDA_VISIBLE_DEVICES="${VISIBLE%%,*}" "$PYTHON" -m training.cli pretrain)
run() { echo "== ${*: -1} $(date +%T)"; "$@" > "$S/last.log" 2>&1 || { tail -30 "$S/last.log" | tee -a "$R/failures.log"; }; }
run "${P[@]}" "${A[@]}" --steps 240 --batch-size 64 --log-every 20 --ckpt-every 1000 --out-dir "$S/scale1"
run "${TR[@]}" "${A[@]}" --steps 240 --batch-size 64 --log-every 20 --ckpt-every 1000 --out-dir "$S/scale2"
run "${P[@]}" "${A[@]}" --steps 120 --batch-size 64 --log-every 1 --ckpt-every 60 --out-dir "$S/one"
run "${TR[@]}" "${A[@]}" --steps 120 --batch-size 32 --log-every 1 --ckpt-every 60 --out-dir "$S/two"
run "${TR[@]}" "${A[@]}" --steps 120 --stop-at 60 --batch-size 32 --log-every 1 --ckpt-every 60 --out-dir "$S/two_one"
run "${P[@]}" "${A[@]}" --steps 120 --log-every 1 --resume --out-dir "$S/two_one"
run "${P[@]}" "${A[@]}" --steps 120 --stop-at 60 --batch-size 64 --log-every 1 --ckpt-every 60 --out-dir "$S/one_two"
run "${TR[@]}" "${A[@]}" --steps 120 --log-every 1 --resume --out-dir "$S/one_two"
for d in scale1 scale2 one two two_one one_two; do cp "$S/$d/log.jsonl" "$R/$d.jsonl" 2>/dev/null; done
"$PYTHON" - "$R" <<'PY' | tee "$R/summary.json"
import json, sys
R = sys.argv[1]
def load(d):
    return {r["step"]: r for r in map(json.loads, open(f"{R}/{d}.jsonl"))}
def rate(d, batch):
    by = load(d); steps = [s for s in sorted(by) if s >= 120]   # steps 120-240: after warm-up
    return (steps[-1] - steps[0]) * batch / (by[steps[-1]]["elapsed_s"] - by[steps[0]]["elapsed_s"])
res = {}
try:
    one = load("one")
    res["one"] = {"loss_step1": one[1]["loss"], "loss_last": one[max(one)]["loss"]}
    for d in ("two", "two_one", "one_two"):
        try:
            other = load(d)
            diffs = [abs(other[s]["loss"] - one[s]["loss"]) / abs(one[s]["loss"]) for s in sorted(one)]
            res[d] = {"steps": len(diffs), "max_rel_diff": max(diffs), "mean_rel_diff": sum(diffs) / len(diffs)}
        except Exception as e:
            res[d] = {"error": repr(e)}
except Exception as e:
    res["one"] = {"error": repr(e)}
try:
    r1, r2 = rate("scale1", 64), rate("scale2", 128)
    res["scaling"] = {"one_gpu_samples_per_s": r1, "two_gpu_samples_per_s": r2, "ratio": r2 / r1, "per_gpu_batch": 64,
                      "steps": "120-240", "log_every": 20}
except Exception as e:
    res["scaling"] = {"error": repr(e)}
print(json.dumps(res, indent=1))
PY
