#!/usr/bin/env bash
# Install elp into .venv/ at the project root. Idempotent: a second run checks a stamp
# (the hash of tools/requirements.txt, setup.py and the torch build) and returns in seconds.
#
# Usage: [TORCH_CUDA=BUILD] tools/install.sh [--force]
#
# TORCH_CUDA picks the build of torch and torchaudio (the versions of tools/requirements.txt):
#   default         PyPI's wheel (torch 2.11.0 there is built for CUDA 13.0: NVIDIA driver R580+)
#   cu126, cu128, cu130, cpu, ...
#                   the wheel of https://download.pytorch.org/whl/<BUILD>, e.g. cu126 for a
#                   driver of the R535/R550 series (CUDA 12.2/12.4)
# Unset, it keeps the build the venv has (default for a new one). The venv records its build in
# .venv/.elp-torch-build, so a run that asks for another build reinstalls torch and torchaudio.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="${root}/.venv"
stamp="${venv}/.elp-install-stamp"
build_record="${venv}/.elp-torch-build"
force=false
[ "${1:-}" = "--force" ] && force=true

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (install.sh) $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- which torch build ------------------------------------------------------------------
installed_build=
if [ -x "${venv}/bin/python" ]; then
    installed_build=$(cat "${build_record}" 2>/dev/null || echo default)   # venvs older than the record: PyPI's
fi
torch_build=${TORCH_CUDA:-${installed_build:-default}}
[[ ${torch_build} =~ ^(default|cpu|cu[0-9]{3}|rocm[0-9]+(\.[0-9]+)*)$ ]] \
    || die "TORCH_CUDA=${torch_build}: use default, cpu, cu<NNN> (e.g. cu126) or rocm<X.Y>, the folders of https://download.pytorch.org/whl/"

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
# PyPI's build leaves the stamp as it was before builds could be chosen (no reinstall for it)
want=$( { cat "${root}/tools/requirements.txt" "${root}/setup.py"
          [ "${torch_build}" = default ] || echo "torch build ${torch_build}"; } | sha256sum | cut -d' ' -f1)
if ! ${force} && [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ] \
        && [ -x "${venv}/bin/python" ]; then
    log "up to date: ${venv} (torch build: ${torch_build})"
    exit 0
fi

python=${PYTHON:-python3}
if [ ! -x "${venv}/bin/python" ]; then
    log "creating ${venv} with $(${python} --version)"
    ${python} -m venv "${venv}"
fi
log "installing the pinned stack (first run downloads torch, a few GB)"
"${venv}/bin/python" -m pip install -q --upgrade pip
if [ -n "${installed_build}" ] && [ "${installed_build}" != "${torch_build}" ]; then
    log "replacing the torch build ${installed_build} by ${torch_build}"
    "${venv}/bin/python" -m pip uninstall -q -y torch torchaudio
fi
if [ "${torch_build}" != default ]; then
    index=https://download.pytorch.org/whl/${torch_build}
    torch_version=$(sed -n 's/^torch==//p' "${root}/tools/requirements.txt")
    torchaudio_version=$(sed -n 's/^torchaudio==//p' "${root}/tools/requirements.txt")
    "${venv}/bin/python" -m pip install -q --index-url "${index}" \
            "torch==${torch_version}" "torchaudio==${torchaudio_version}" \
        || die "no torch ${torch_version} + torchaudio ${torchaudio_version} for this Python from ${index} (see pip's message above):" \
               "pick another TORCH_CUDA (the builds of a torch version are listed at https://pytorch.org/get-started/previous-versions/)"
fi
"${venv}/bin/python" -m pip install -q -r "${root}/tools/requirements.txt"
"${venv}/bin/python" -m pip install -q --no-deps -e "${root}"
ELP_TORCH_BUILD=${torch_build} "${venv}/bin/python" - <<'PY'
import os
import torch, torchaudio, speechbrain, transformers
assert torch.__version__.split("+")[0] == torchaudio.__version__.split("+")[0], \
    (torch.__version__, torchaudio.__version__)
build = os.environ["ELP_TORCH_BUILD"]
if build == "cpu" or build.startswith("cu"):
    expected = None if build == "cpu" else f"{build[2:-1]}.{build[-1]}"   # cu126 -> 12.6
    assert torch.version.cuda == expected, f"TORCH_CUDA={build} but torch {torch.__version__} has CUDA {torch.version.cuda}"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torchaudio {torchaudio.__version__}, "
      f"speechbrain {speechbrain.__version__}, transformers {transformers.__version__}")
PY
echo "${torch_build}" > "${build_record}"
echo "${want}" > "${stamp}"
log "done: ${venv} (torch build: ${torch_build})"
