#!/usr/bin/env bash
# Issue 7 on 2 GPUs: loss trajectory 2 GPUs vs 1 (same global batch), scaling, checkpoints across world sizes.
set -uo pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache
export NCCL_NVLS_ENABLE=0
mkdir -p /tmp/data /tmp/r && cp -r data/bank /tmp/data/bank
nvidia-smi --query-gpu=name --format=csv,noheader > $OUT/gpus.txt
python3 -m training.cli data build --size small --workers 30 > /tmp/small.log 2>&1; echo "small rc=$? $(($(date +%s)-T0))s"
python3 - <<'PY'
import torch
from hear_mamclap.model import EncoderConfig
from training.pretrain.teacher import LaionClapTeacher, TeacherConfig, save_laion_checkpoint
torch.manual_seed(0)
t = LaionClapTeacher(EncoderConfig.preset("base"), TeacherConfig(projection=True))
state = {f"audio_branch.{k}": v for k, v in t.audio_branch.state_dict().items()}
state.update({f"audio_projection.{k}": v for k, v in t.audio_projection.state_dict().items()})
save_laion_checkpoint("/tmp/clap.pt", state)
PY
C=/tmp/data/kit-small-s0/corpus
A="--preset supmam_clap --size base --data $C --teacher /tmp/clap.pt --warmup-steps 10 --log-every 1 --workers 8"
TR="torchrun --standalone --nproc_per_node=2 -m training.cli pretrain"
P="python3 -m training.cli pretrain"
run() { echo "== $* $(($(date +%s)-T0))s"; "$@" > /tmp/last.log 2>&1 || { tail -30 /tmp/last.log; tail -30 /tmp/last.log > $OUT/fail_$(date +%s).log; }; }
run $P $A --steps 120 --batch-size 64 --ckpt-every 60 --out-dir /tmp/r/one
run $TR $A --steps 120 --batch-size 32 --ckpt-every 60 --out-dir /tmp/r/two
run $TR $A --steps 120 --stop-at 60 --batch-size 32 --ckpt-every 60 --out-dir /tmp/r/two_one
run $P $A --steps 120 --out-dir /tmp/r/two_one --resume
run $P $A --steps 120 --stop-at 60 --batch-size 64 --ckpt-every 60 --out-dir /tmp/r/one_two
run $TR $A --steps 120 --out-dir /tmp/r/one_two --resume
run $TR $A --steps 120 --batch-size 64 --ckpt-every 1000 --out-dir /tmp/r/scale2
for d in one two two_one one_two scale2; do cp /tmp/r/$d/log.jsonl $OUT/$d.jsonl 2>/dev/null; done
python3 - <<'PY' | tee $OUT/summary.json
import json, os
def load(d):
    by = {}
    for line in open(f"/tmp/r/{d}/log.jsonl"):
        r = json.loads(line); by[r["step"]] = r
    return by
def rate(d, batch):
    by = load(d); steps = sorted(by); half = steps[len(steps)//2:]
    return (half[-1] - half[0]) * batch / (by[half[-1]]["elapsed_s"] - by[half[0]]["elapsed_s"])
one, res = load("one"), {}
for d in ("two", "two_one", "one_two"):
    try:
        other = load(d)
        diffs = [abs(other[s]["loss"] - one[s]["loss"]) / abs(one[s]["loss"]) for s in sorted(one)]
        res[d] = {"steps": len(diffs), "max_rel_diff": max(diffs), "mean_rel_diff": sum(diffs) / len(diffs),
                  "loss_step1": other[1]["loss"], "loss_last": other[max(other)]["loss"]}
    except Exception as e:
        res[d] = {"error": repr(e)}
res["one"] = {"loss_step1": one[1]["loss"], "loss_last": one[max(one)]["loss"]}
try:
    r1, r2 = rate("one", 64), rate("scale2", 128)
    res["scaling"] = {"one_gpu_samples_per_s": r1, "two_gpu_samples_per_s": r2, "ratio": r2 / r1,
                      "per_gpu_batch": 64}
except Exception as e:
    res["scaling"] = {"error": repr(e)}
print(json.dumps(res, indent=1))
PY
echo "== end $(($(date +%s)-T0))s"
