#!/usr/bin/env bash
# Install elp into .venv/ at the project root. Idempotent: a second run checks a stamp
# (the hash of tools/requirements.txt and setup.py) and returns in seconds.
#
# Usage: tools/install.sh [--force]
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${root}/.venv"
stamp="${venv}/.elp-install-stamp"
force=false
[ "${1:-}" = "--force" ] && force=true

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh) $*" >&2; }

# --- system package: espeak-ng (synthetic corpora) ------------------------------------
if ! command -v espeak-ng >/dev/null 2>&1; then
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        log "installing espeak-ng (Debian package)"
        apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng >/dev/null
    else
        log "WARNING: espeak-ng is missing; the synthetic mini corpora need it."
        log "         install it with: sudo apt-get install espeak-ng"
    fi
fi

# --- python environment ---------------------------------------------------------------
want=$(cat "${root}/tools/requirements.txt" "${root}/setup.py" | sha256sum | cut -d' ' -f1)
if ! ${force} && [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ] \
        && [ -x "${venv}/bin/python" ]; then
    log "up to date: ${venv}"
    exit 0
fi

python=${PYTHON:-python3}
if [ ! -x "${venv}/bin/python" ]; then
    log "creating ${venv} with $(${python} --version)"
    ${python} -m venv "${venv}"
fi
log "installing the pinned stack (first run downloads torch, a few GB)"
"${venv}/bin/python" -m pip install -q --upgrade pip
"${venv}/bin/python" -m pip install -q -r "${root}/tools/requirements.txt"
"${venv}/bin/python" -m pip install -q --no-deps -e "${root}"
"${venv}/bin/python" - <<'PY'
import torch, torchaudio, speechbrain, transformers
assert torch.__version__.split("+")[0] == torchaudio.__version__.split("+")[0], \
    (torch.__version__, torchaudio.__version__)
print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, "
      f"speechbrain {speechbrain.__version__}, transformers {transformers.__version__}")
PY
echo "${want}" > "${stamp}"
log "done: ${venv}"
