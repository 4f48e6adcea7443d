#!/usr/bin/env bash
# Build the small kit on the node (from the carried bank) and bring back its captions and vocabulary.
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD USE_TF=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 MAMCLAP_DATA=/tmp/data MAMCLAP_CACHE=/tmp/cache
mkdir -p /tmp/data && cp -r data/bank /tmp/data/bank
python3 -m training.cli data build --size small --workers 14 > /tmp/small.log 2>&1; echo "small rc=$?"
python3 - <<'PY'
import json, os
from training.pretrain.clap_train import open_corpus
clips, captions = open_corpus("/tmp/data/kit-small-s0/corpus")
json.dump({"captions": captions, "vocabulary": [list(v) for v in clips.vocabulary]}, open(os.environ["OUT"] + "/captions_small.json", "w"))
print(len(captions))
PY
