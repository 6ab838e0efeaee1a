#!/usr/bin/env bash
# A comparison protocol end to end (protocols/<name>.yaml; docs/PROTOCOLS.md): data preparation,
# the learning-rate grid on validation, the selection per task and method, the selected point
# with every seed, then one table with significance tests (exp/protocols/<name>/comparison.*).
#
#   ./run_protocol.sh --protocol protocols/mini.yaml                 # CPU, synthetic mini corpora
#   ./run_protocol.sh --protocol protocols/icassp23.yaml --dry_run true   # every trial and its cost
#   ./run_protocol.sh --protocol protocols/icassp23.yaml --ngpu 1 --jobs 4 \
#       --data_roots "librispeech=/corpora voxceleb=/corpora/voxceleb1 iemocap=/corpora \
#                     fluent_speech_commands=/corpora/fluent_speech_commands_dataset"
#
# Rerunning resumes: a trial whose experiment recorded the protocol's hparams and finished is
# reused; one recorded with other hparams (a changed grid value) is retrained; nothing else is.
set -euo pipefail

protocol=                 # protocols/<name>.yaml
data_roots=               # "corpus=DIR ..." (a protocol on real corpora; the keys are its data_root_key)
recipes=                  # "corpus/task ...": only these recipes of the protocol
ngpu=0                    # GPUs per job (0: CPU); jobs get disjoint GPU sets and ports (as run_all.sh)
jobs=$(nproc)             # jobs at a time
dry_run=false             # print every trial, what is done, and the estimated cost; run nothing
root=                     # where egs/ and exp/ are (default: this repository; tests use a copy)
help_message="Usage: $0 --protocol protocols/NAME.yaml [--dry_run true] [--ngpu N] [--jobs N]
                [--data_roots 'corpus=DIR ...'] [--recipes 'corpus/task ...'] [--root DIR]"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)   # relative paths stay relative to where you are
# --dry-run / --dry_run without a value means true
args=()
while [ $# -gt 0 ]; do
    if [[ "$1" == --dry[-_]run ]] && [[ "${2:-}" != true && "${2:-}" != false ]]; then args+=(--dry_run true); else args+=("$1"); fi
    shift
done
set -- "${args[@]+"${args[@]}"}"
"${here}/tools/install.sh"
. "${here}/recipes/path.sh"
. "${here}/recipes/utils/log.sh"
require_bash 5 1          # the job slots wait with `wait -n -p`
. "${here}/recipes/utils/parse_options.sh"
. "${here}/recipes/utils/gpu_slots.sh"
[ $# -eq 0 ] || die "unexpected argument '$1' (see --help)"
[ -n "${protocol}" ] || die "--protocol is required (the shipped ones: $(cd "${here}" && echo protocols/*.yaml))"
[ -f "${protocol}" ] || [ ! -f "${here}/${protocol}" ] || protocol=${here}/${protocol}
[ -f "${protocol}" ] || die "--protocol ${protocol}: no such file (the shipped ones: $(cd "${here}" && echo protocols/*.yaml))"
root=$(readlink -f "${root:-${here}}")

common=(--protocol "${protocol}" --root "${root}" --data_roots "${data_roots}" --recipes "${recipes}" --ngpu "${ngpu}")
driver() { python "${here}/recipes/protocol.py" "$1" "${common[@]}" "${@:2}"; }

if ${dry_run}; then
    driver plan
    exit 0
fi
started=$(date +%s)
log "Data preparation (stages 0-2)"
driver prep || die "data preparation failed (above)"

run_job() { driver run-job --job "$1"; }
gpu_slots_init "${ngpu}" "${jobs}" || die "no job slots for --ngpu ${ngpu} --jobs ${jobs}"
for phase in grid final; do
    list=$(driver jobs --phase "${phase}") || die "listing the ${phase} jobs failed (above)"
    mapfile -t job_list <<< "${list}"
    [ -n "${list}" ] || job_list=()
    log "Phase ${phase}: ${#job_list[@]} job(s) in ${NUM_SLOTS} slot(s)"
    if [ ${#job_list[@]} -gt 0 ]; then
        run_in_slots run_job "${job_list[@]}"
        [ "${SLOTS_FAILED}" -eq 0 ] || die "${SLOTS_FAILED} ${phase} job(s) failed (logs: ${root}/exp/protocols/*/logs)"
    fi
    if [ "${phase}" = grid ]; then
        driver select || die "the selection failed (above)"
    fi
done
driver report || die "the comparison failed (above)"
log "Finished in $(( $(date +%s) - started )) s"
