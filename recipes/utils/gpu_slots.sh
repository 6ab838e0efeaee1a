#!/usr/bin/env bash
# Job slots for run_all.sh (source it after log.sh and path.sh):
#
#   . recipes/utils/gpu_slots.sh
#   gpu_slots_init "${ngpu}" "${jobs}" [BASE_PORT]   # fills SLOT_DEVICES, SLOT_PORTS, SLOT_THREADS
#   run_in_slots run_job "${job_list[@]}"       # each job string is word-split into arguments
#   [ "${SLOTS_FAILED}" -eq 0 ] || die "${SLOTS_FAILED} job(s) failed"
#
# gpu_slots_init asks recipes/utils/gpu_slots.py for the slots: with --ngpu N > 0, one slot per
# N visible GPUs (at most ${jobs}), each with its own CUDA_VISIBLE_DEVICES set and a free
# master port above BASE_PORT (default 29500); with --ngpu 0, ${jobs} CPU slots with one thread
# each. ELP_FAKE_GPU_COUNT=K pretends K GPUs are visible (tests, dry runs).
#
# run_in_slots runs "FUNC ARGS..." for every job, at most one job per slot at a time; a job
# starts as soon as a slot is free. Inside the job these are exported:
#   CUDA_VISIBLE_DEVICES   the slot's GPUs ("" for CPU slots: no GPU is visible)
#   ELP_MASTER_PORT        the slot's port (pass it as --master_port to run.sh)
#   OMP_NUM_THREADS        the slot's threads per process
#   ELP_SLOT               the slot number
#   ELP_JOB_INDEX          the job's position in the list (0, 1, ...): the same on every node
#                          that runs the same list (run_all.sh derives multi-node ports from it)
# SLOTS_FAILED holds the number of jobs that returned non-zero.

_gpu_slots_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

gpu_slots_init() {
    local ngpu=$1 jobs=$2 base_port=${3:-29500} out line slot devices port threads
    out=$(python "${_gpu_slots_dir}/gpu_slots.py" --ngpu "${ngpu}" --jobs "${jobs}" --base_port "${base_port}") || return 1
    SLOT_DEVICES=()
    SLOT_PORTS=()
    SLOT_THREADS=()
    while IFS=$'\t' read -r slot devices port threads; do
        [ -n "${slot}" ] || continue
        [ "${devices}" = - ] && devices=
        SLOT_DEVICES+=("${devices}")
        SLOT_PORTS+=("${port}")
        SLOT_THREADS+=("${threads}")
    done <<< "${out}"
    NUM_SLOTS=${#SLOT_PORTS[@]}
}

run_in_slots() {
    local func=$1 job slot pid finished index=-1
    shift
    [ -n "${NUM_SLOTS:-}" ] || { echo "run_in_slots: call gpu_slots_init first" >&2; return 1; }
    local -a free=()
    local -A slot_of=()
    for ((slot = NUM_SLOTS - 1; slot >= 0; slot--)); do free+=("${slot}"); done
    SLOTS_FAILED=0
    for job in "$@"; do
        index=$((index + 1))
        if [ ${#free[@]} -eq 0 ]; then
            finished=
            wait -n -p finished || SLOTS_FAILED=$((SLOTS_FAILED + 1))
            free+=("${slot_of[${finished}]}")
            unset "slot_of[${finished}]"
        fi
        slot=${free[-1]}
        unset 'free[-1]'
        # shellcheck disable=SC2086
        (
            export CUDA_VISIBLE_DEVICES=${SLOT_DEVICES[${slot}]} ELP_MASTER_PORT=${SLOT_PORTS[${slot}]}
            export OMP_NUM_THREADS=${SLOT_THREADS[${slot}]} ELP_SLOT=${slot} ELP_JOB_INDEX=${index}
            "${func}" ${job}
        ) &
        pid=$!
        slot_of[${pid}]=${slot}
    done
    while [ ${#slot_of[@]} -gt 0 ]; do
        finished=
        wait -n -p finished || SLOTS_FAILED=$((SLOTS_FAILED + 1))
        unset "slot_of[${finished}]"
    done
    return 0
}
