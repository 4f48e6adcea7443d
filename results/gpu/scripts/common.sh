# Sourced by the GPU job scripts (not run on its own): the repository root as the working directory, the
# scratch folders, the optional wheel install, an offline environment and the source bank in the data root.
#
#   PYTHON        interpreter with mamclap importable (default: .venv/bin/python if present, else python3)
#   WORK          scratch folder for kits, runs and logs (default: ${TMPDIR:-/tmp}/mamclap-gpu)
#   OUT           folder for the files to bring back (default: $WORK/out)
#   MAMCLAP_DATA  data root (default: $WORK/data); the source bank is copied into it from BANK when missing
#   BANK          the source bank to copy (default: data/bank, built by `mamclap data bank`); may come in a
#                 later call when CORPUS_BANK is set
#   DEADLINE      seconds from the start after which long steps are stopped (optional: for a lent machine's
#                 per-call limit; unset, nothing is stopped)
#   WHEELS        space-separated folders of wheels to install with --no-deps into $WORK/site, once per
#                 machine (optional: for a GPU image that lacks some of the project's packages)
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
WORK="${WORK:-${TMPDIR:-/tmp}/mamclap-gpu}"
OUT="${OUT:-$WORK/out}"
export MAMCLAP_DATA="${MAMCLAP_DATA:-$WORK/data}"
export MAMCLAP_CACHE="${MAMCLAP_CACHE:-$WORK/cache}"
BANK="${BANK:-data/bank}"
mkdir -p "$WORK" "$OUT" "$MAMCLAP_DATA"

if [[ -n "${WHEELS:-}" && ! -f "$WORK/site/.installed" ]]; then
  wheels=()
  for d in $WHEELS; do wheels+=("$d"/*.whl); done
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
    "${wheels[@]}" || exit 1
  touch "$WORK/site/.installed"
fi
if [[ -d "$WORK/site" ]]; then export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"; fi

# No model hub, no TensorFlow in transformers, no wandb; NVLink multicast off for NCCL (see the device notes).
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 USE_TF=0 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0

# A job that brings the corpus bank first (CORPUS_BANK, representations_driver.py) gets the bank in a later call.
if [[ ! -f "$MAMCLAP_DATA/bank/index.jsonl" ]]; then
  if [[ -f "$BANK/index.jsonl" ]]; then
    rm -rf "$MAMCLAP_DATA/bank.partial" && cp -r "$BANK" "$MAMCLAP_DATA/bank.partial" \
      && mv "$MAMCLAP_DATA/bank.partial" "$MAMCLAP_DATA/bank"
  elif [[ -z "${CORPUS_BANK:-}" ]]; then
    echo "no source bank at $BANK (run: mamclap data bank)" >&2; exit 1
  fi
fi

MAMCLAP=("$PYTHON" -m training.cli)
T0=$(date +%s)
elapsed() { echo "$(($(date +%s) - T0)) s"; }
# Run a command, stopped at DEADLINE when one is set.
by_deadline() {
  if [[ -n "${DEADLINE:-}" ]]; then timeout "$((DEADLINE - ($(date +%s) - T0)))" "$@"; else "$@"; fi
}

# A random LAION-layout HTS-AT-tiny CLAP checkpoint (seed 0): the benchmarks' stand-in teacher.
random_teacher() {  # PATH
  [[ -f "$1" ]] || "${MAMCLAP[@]}" teacher init --out "$1" >/dev/null
}

# The small kit's caption embeddings (MiniLM) for `mamclap teacher train`: CAPTIONS if set (made on a machine
# where MiniLM runs), else embedded here.
captions() {  # KIT_CORPUS -> prints the path
  if [[ -n "${CAPTIONS:-}" ]]; then echo "$CAPTIONS"; return; fi
  local out="$WORK/captions-$(basename "$(dirname "$1")").pt"
  [[ -f "$out" ]] || "${MAMCLAP[@]}" teacher embed-captions --data "$1" --out "$out" >&2
  echo "$out"
}
