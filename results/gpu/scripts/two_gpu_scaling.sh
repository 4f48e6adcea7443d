#!/usr/bin/env bash
# Issue 7 scaling on a 2-GPU machine: ViT-B SupMAM-CLAP, 1 GPU vs 2 GPUs at the same per-GPU batch (64 and
# 128; --batch-size is per process), steps 120-240 timed, log every 20 steps. Nothing else runs on the machine.
set -uo pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache NCCL_NVLS_ENABLE=0
mkdir -p /tmp/data /tmp/r3 && cp -r data/bank /tmp/data/bank
nvidia-smi --query-gpu=name --format=csv,noheader; nproc
python3 -m training.cli data build --size small --workers 30 > /tmp/small.log 2>&1; echo "small rc=$? $(($(date +%s)-T0))s"
python3 - <<'PY'
import torch
from hear_mamclap.model import EncoderConfig
from training.pretrain.teacher import LaionClapTeacher, TeacherConfig, save_laion_checkpoint
torch.manual_seed(0)
t = LaionClapTeacher(EncoderConfig.preset("base"), TeacherConfig(projection=True))
state = {f"audio_branch.{k}": v for k, v in t.audio_branch.state_dict().items()}
state.update({f"audio_projection.{k}": v for k, v in t.audio_projection.state_dict().items()})
save_laion_checkpoint("/tmp/r3/clap.pt", state)
PY
A="--preset supmam_clap --size base --data /tmp/data/kit-small-s0/corpus --teacher /tmp/r3/clap.pt --warmup-steps 10 --workers 8 --steps 240 --log-every 20 --ckpt-every 1000"
for b in 64 128; do
  echo "== b=$b $(($(date +%s)-T0))s"
  CUDA_VISIBLE_DEVICES=0 python3 -m training.cli pretrain $A --batch-size $b --out-dir /tmp/r3/one_$b > /tmp/r3/one_$b.log 2>&1 || tail -5 /tmp/r3/one_$b.log
  torchrun --standalone --nproc_per_node=2 -m training.cli pretrain $A --batch-size $b --out-dir /tmp/r3/two_$b > /tmp/r3/two_$b.log 2>&1 || tail -5 /tmp/r3/two_$b.log
  cp /tmp/r3/one_$b/log.jsonl $OUT/one_$b.jsonl; cp /tmp/r3/two_$b/log.jsonl $OUT/two_$b.jsonl
done
python3 - <<'PY'
import json, os
def rate(path, batch):
    by = {r["step"]: r for r in map(json.loads, open(path))}; st = [s for s in sorted(by) if s >= 120]
    return (st[-1] - st[0]) * batch / (by[st[-1]]["elapsed_s"] - by[st[0]]["elapsed_s"])
out = {}
for b in (64, 128):
    r1, r2 = rate(f"{os.environ['OUT']}/one_{b}.jsonl", b), rate(f"{os.environ['OUT']}/two_{b}.jsonl", 2 * b)
    out[b] = {"one_gpu": r1, "two_gpus": r2, "ratio": r2 / r1}
print(json.dumps(out, indent=1)); json.dump(out, open(os.environ["OUT"] + "/scaling.json", "w"), indent=1)
PY
echo "== end $(($(date +%s)-T0))s"
