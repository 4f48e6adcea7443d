#!/usr/bin/env bash
# GPU call 2: medium kit build from the carried bank (timed), then the end-to-end pretraining benchmark.
set -uo pipefail
T0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache
mkdir -p /tmp/data /tmp/runs && rm -rf /tmp/data/bank && cp -r data/bank /tmp/data/bank
python3 - <<'PY' &
import torch
from hear_mamclap.model import EncoderConfig
from training.pretrain.teacher import LaionClapTeacher, TeacherConfig, save_laion_checkpoint
torch.manual_seed(0)
t = LaionClapTeacher(EncoderConfig.preset("base"), TeacherConfig(projection=True))
state = {f"audio_branch.{k}": v for k, v in t.audio_branch.state_dict().items()}
state.update({f"audio_projection.{k}": v for k, v in t.audio_projection.state_dict().items()})
save_laion_checkpoint("/tmp/random_clap.pt", state)
PY
echo "== medium build $(($(date +%s)-T0))s"
timeout 420 /usr/bin/time -v python3 -m training.cli data build --size medium --workers 16 > /tmp/medium_build.log 2>&1
echo "build rc=$? $(($(date +%s)-T0))s"
tail -c 4000 /tmp/medium_build.log | tr '\r' '\n' | tail -45 > $OUT/medium_build.log
python3 -m training.cli data show --size medium > $OUT/medium_show.txt 2>&1
cp /tmp/data/kit-medium-s0/manifest.json $OUT/medium_manifest.json 2>/dev/null
wait
echo "== pretrain bench $(($(date +%s)-T0))s"
LEFT=$((570-($(date +%s)-T0)))
[ -f /tmp/data/kit-medium-s0/corpus/corpus.json ] && timeout $LEFT python3 -m training.bench.pretrain --data /tmp/data/kit-medium-s0/corpus --preset supmam_clap --size base \
  --teacher /tmp/random_clap.pt --steps 300 --batch-size 64 --workers 12 --out-dir /tmp/runs/bench \
  --json $OUT/bench_pretrain.json > /tmp/bench_pretrain.log 2>&1
tail -c 3000 /tmp/bench_pretrain.log | tr '\r' '\n' | tail -40 > $OUT/bench_pretrain.log
cp /tmp/runs/bench/log.jsonl $OUT/bench_log.jsonl; cp /tmp/runs/bench/loss.png $OUT/bench_loss.png
echo "== end $(($(date +%s)-T0))s"
