#!/usr/bin/env bash
# Install what is needed (tools/install.sh, idempotent), then run the test suite; its temporary
# files live in one directory under $TMPDIR, removed when the suite passes.
#
# Usage: tools/test.sh [pytest args...]      e.g. tools/test.sh -k methods -x
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "${root}"
"${root}/tools/install.sh"
# 2-core machines: one BLAS/OpenMP thread per process avoids oversubscription (docs/DESIGN.md "Threads").
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Every temporary file of the run (pytest's tmp_path, docstring examples, the recipes the tests
# start) goes to one scratch directory: removed when the suite passes, kept (and named) when not.
scratch=$(mktemp -d "${TMPDIR:-/tmp}/elp-tests.XXXXXX")
export TMPDIR=${scratch}
status=0
"${root}/.venv/bin/python" -m pytest "$@" || status=$?
if [ "${status}" -eq 0 ] || [ "${status}" -eq 5 ]; then
    rm -rf "${scratch}"
else
    echo "$0: the temporary files of this run are kept in ${scratch}" >&2
fi
exit "${status}"
