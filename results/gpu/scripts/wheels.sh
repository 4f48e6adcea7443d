#!/usr/bin/env bash
# The Python 3.12 wheels that the GPU image lacks (results/gpu/scripts/README.md; ../INTEGRATION facts: no
# soundfile, laion-clap, heareval or s3prl there, and no package index), built on this machine into two
# git-ignored folders that a device call carries and common.sh installs with WHEELS=".whl .whl-eval":
#
#   .whl       the runtime's and the kit's: soundfile, laion-clap, librosa and what they pull in
#   .whl-eval  the harnesses': heareval, pytorch-lightning 1.9.5, s3prl 0.4.18 and their small deps
#
# Versions are those of constraints.txt where it pins them. A package published only as an sdist is built
# here into a wheel (all of these are pure Python, so the wheel fits 3.12 too).
#
#   bash results/gpu/scripts/wheels.sh [PYTHON]      # default .venv/bin/python
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../../.."
PY="${1:-.venv/bin/python}"
pin() {  # NAME -> NAME==VERSION from constraints.txt, or NAME when it is not pinned there
  local v
  v=$(grep -iE "^${1//-/[-_]}==" constraints.txt | head -1 | cut -d= -f3 || true)
  if [[ -n "$v" ]]; then echo "$1==$v"; else echo "$1"; fi
}
fetch() {  # DIR PACKAGE...
  local dir=$1; shift
  mkdir -p "$dir"
  for p in "$@"; do
    local spec; spec=$(pin "$p")
    if ! "$PY" -m pip download -q --no-deps --only-binary :all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$dir" "$spec" 2>/dev/null; then
      "$PY" -m pip wheel -q --no-deps -w "$dir" "$spec"
    fi
  done
}
fetch .whl soundfile cffi pycparser webdataset braceexpand laion-clap torchlibrosa librosa audioread soxr pooch \
  decorator platformdirs standard-aifc standard-sunau
fetch .whl-eval heareval pytorch-lightning dcase-util sed-eval intervaltree more-itertools python-slugify \
  text-unidecode torchinfo validators pydot-ng future omegaconf tensorboardX setuptools python-magic s3prl
ls .whl .whl-eval
du -sh .whl .whl-eval
