#!/usr/bin/env bash
# Issue 7 on two GPUs of the machine (CUDA_VISIBLE_DEVICES set by the driver): loss trajectory 2 GPUs vs 1 at
# the same global batch, checkpoints across world sizes, and scaling at 64 clips per GPU with a log every 20 steps.
set -uo pipefail
R=$1; mkdir -p $R /tmp/r2
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name --format=csv,noheader > $R/gpus.txt
python3 - <<'PY'
import torch
from hear_mamclap.model import EncoderConfig
from training.pretrain.teacher import LaionClapTeacher, TeacherConfig, save_laion_checkpoint
torch.manual_seed(0)
t = LaionClapTeacher(EncoderConfig.preset("base"), TeacherConfig(projection=True))
state = {f"audio_branch.{k}": v for k, v in t.audio_branch.state_dict().items()}
state.update({f"audio_projection.{k}": v for k, v in t.audio_projection.state_dict().items()})
save_laion_checkpoint("/tmp/r2/clap.pt", state)
PY
C=$MAMCLAP_DATA/kit-small-s0/corpus
A="--preset supmam_clap --size base --data $C --teacher /tmp/r2/clap.pt --warmup-steps 10 --workers 8"
TR="torchrun --standalone --nproc_per_node=2 -m training.cli pretrain"
P="env CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES%%,*} python3 -m training.cli pretrain"
run() { echo "== $* $(date +%T)"; "$@" > /tmp/r2/last.log 2>&1 || { tail -30 /tmp/r2/last.log | tee -a $R/failures.log; }; }
run $P $A --steps 240 --batch-size 64 --log-every 20 --ckpt-every 1000 --out-dir /tmp/r2/scale1
run $TR $A --steps 240 --batch-size 64 --log-every 20 --ckpt-every 1000 --out-dir /tmp/r2/scale2
run $P $A --steps 120 --batch-size 64 --log-every 1 --ckpt-every 60 --out-dir /tmp/r2/one
run $TR $A --steps 120 --batch-size 32 --log-every 1 --ckpt-every 60 --out-dir /tmp/r2/two
run $TR $A --steps 120 --stop-at 60 --batch-size 32 --log-every 1 --ckpt-every 60 --out-dir /tmp/r2/two_one
run $P $A --steps 120 --log-every 1 --out-dir /tmp/r2/two_one --resume
run $P $A --steps 120 --stop-at 60 --batch-size 64 --log-every 1 --ckpt-every 60 --out-dir /tmp/r2/one_two
run $TR $A --steps 120 --log-every 1 --out-dir /tmp/r2/one_two --resume
for d in scale1 scale2 one two two_one one_two; do cp /tmp/r2/$d/log.jsonl $R/$d.jsonl 2>/dev/null; done
python3 - "$R" <<'PY' | tee $R/summary.json
import json, sys
R = sys.argv[1]
def load(d):
    return {r["step"]: r for r in map(json.loads, open(f"{R}/{d}.jsonl"))}
def rate(d, batch):
    by = load(d); steps = [s for s in sorted(by) if s >= 120]   # steps 120-240: after warm-up and compile-free start
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
