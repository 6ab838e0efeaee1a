#!/usr/bin/env bash
# Install what is needed (tools/install.sh, idempotent), then run the test suite.
#
# Usage: tools/test.sh [pytest args...]      e.g. tools/test.sh -k methods -x
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"
"${root}/tools/install.sh"
# 2-core machines: one BLAS/OpenMP thread per process avoids oversubscription (docs/DESIGN.md "Threads").
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${root}/.venv/bin/python" -m pytest "$@"
