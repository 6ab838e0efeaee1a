#!/usr/bin/env bash
# Environment for recipe scripts; source it (directly or through a symlink in
# egs/<corpus>/<task>/path.sh): . ./path.sh
#
#   ELP_ROOT          the project root (resolved from this file's real location)
#   PATH              ${ELP_ROOT}/.venv/bin first, when the virtual environment exists
#   PYTHONPATH        ${ELP_ROOT} first, so "import elp" works without installing
#   OMP_NUM_THREADS   kept if set, else 1 (several threads per process oversubscribe
#                     small machines; docs/DESIGN.md "Threads")
#   LC_ALL=C          byte-order sorting, as Kaldi data directories require
#   PYTHONUTF8=1      Python keeps UTF-8 I/O under LC_ALL=C

ELP_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
export ELP_ROOT

if [ -d "${ELP_ROOT}/.venv/bin" ]; then
    export PATH="${ELP_ROOT}/.venv/bin:${PATH}"
fi
export PYTHONPATH="${ELP_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export LC_ALL=C
export PYTHONUTF8=1
