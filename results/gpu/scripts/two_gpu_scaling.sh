#!/usr/bin/env bash
# Two-GPU scaling of the pretraining loop on a machine with nothing else running: ViT-B SupMAM-CLAP (random
# LAION-layout teacher, the small kit's corpus, built when missing), 1 GPU vs 2 GPUs at the same per-GPU
# batch (64 and 128; --batch-size is per process), samples/s over steps 120-240, a log every 20 steps.
#
#   bash results/gpu/scripts/two_gpu_scaling.sh     # environment: common.sh; writes $OUT/scaling.json
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
S="$WORK/two_gpu_scaling"; mkdir -p "$S"
nvidia-smi --query-gpu=name --format=csv,noheader; nproc
C="$MAMCLAP_DATA/kit-small-s0/corpus"
[[ -f "$C/corpus.json" ]] || "${MAMCLAP[@]}" data build --size small --workers "$(nproc)" > "$S/small_build.log" 2>&1
echo "small kit $(elapsed)"
random_teacher "$S/clap.pt"
A=(--preset supmam_clap --size base --data "$C" --teacher "$S/clap.pt" --warmup-steps 10 --workers 8 --steps 240
   --log-every 20 --ckpt-every 1000)
for b in 64 128; do
  echo "== b=$b $(elapsed)"
  CUDA_VISIBLE_DEVICES=0 "${MAMCLAP[@]}" pretrain "${A[@]}" --batch-size $b --out-dir "$S/one_$b" > "$S/one_$b.log" 2>&1 \
    || tail -5 "$S/one_$b.log"
  "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=2 -m training.cli pretrain "${A[@]}" --batch-size $b \
    --out-dir "$S/two_$b" > "$S/two_$b.log" 2>&1 || tail -5 "$S/two_$b.log"
  cp "$S/one_$b/log.jsonl" "$OUT/one_$b.jsonl"; cp "$S/two_$b/log.jsonl" "$OUT/two_$b.jsonl"
done
"$PYTHON" - "$OUT" <<'PY'
import json, sys
out_dir = sys.argv[1]
def rate(path, batch):
    by = {r["step"]: r for r in map(json.loads, open(path))}; st = [s for s in sorted(by) if s >= 120]
    return (st[-1] - st[0]) * batch / (by[st[-1]]["elapsed_s"] - by[st[0]]["elapsed_s"])
out = {}
for b in (64, 128):
    r1, r2 = rate(f"{out_dir}/one_{b}.jsonl", b), rate(f"{out_dir}/two_{b}.jsonl", 2 * b)
    out[b] = {"one_gpu": r1, "two_gpus": r2, "ratio": r2 / r1}
print(json.dumps(out, indent=1)); json.dump(out, open(f"{out_dir}/scaling.json", "w"), indent=1)
PY
echo "== end $(elapsed)"
