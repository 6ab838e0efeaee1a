#!/usr/bin/env bash
# Launching the stages of a recipe on one or more GPUs and nodes (source it after log.sh, once
# the options are parsed). Reads these variables of the caller (run_task.sh options):
#
#   ngpu          GPUs per node for training (0: CPU)
#   ddp_cpu       CPU processes per node for DDP over gloo (0: off); the only way to get CPU DDP
#   nnodes        number of nodes
#   node_rank     this node's rank (0 .. nnodes-1)
#   master_addr   address of node rank 0
#   master_port   rendezvous port (run_all.sh passes each job slot its own)
#   stage, stop_stage
#
# Functions
#   elp_check_nodes                  validate the options above without asking torch
#   elp_check_launch                 elp_check_nodes; then --ngpu N > 0 without N usable
#                                    CUDA devices is an error (no silent fall-back to CPU); when
#                                    nvidia-smi reports a driver that the installed torch build
#                                    cannot use, the error names both and the TORCH_CUDA install
#                                    that fits (elp.runtime.cuda_driver_problem)
#   elp_train_command SCRIPT ARGS... [-- OVERRIDES...]
#                                    sets the array ELP_CMD to the stage-3 command:
#                                    torchrun whenever processes x nnodes > 1, plain python
#                                    otherwise; OVERRIDES go last (they win over the device and
#                                    backend options added here)
#   elp_run CMD...                   run CMD, or print it (shell-quoted, one line on stdout)
#                                    when ELP_DRY_RUN=1 or dry_run=true
#   elp_stage N                      true when stage N is in [stage, stop_stage] and runs on this
#                                    node: stage 3 runs on every node, all others on node rank 0
#                                    only (one writer for data dirs, decodes and RESULTS.md)
#   elp_run_key ITEM...              16 hex digits of sha256 over the items: what a marker holds
#   elp_mark_prepared FILE KEY       write KEY into FILE in one rename (node rank 0, when its
#                                    stages 0-2 are done)
#   elp_wait_prepared FILE KEY TIMEOUT
#                                    wait until FILE holds KEY (node ranks > 0, before stage 3);
#                                    after TIMEOUT seconds one error line and exit 1; 0: no wait.
#                                    ELP_WAIT_POLL_S (default 5) is the polling interval
#
# ELP_FAKE_GPU_COUNT=K pretends K usable CUDA devices (tests, dry runs); otherwise torch is
# asked (torch.cuda.is_available() and torch.cuda.device_count()).
#
# Multi-node: run the same command on every node with --nnodes, --node_rank and --master_addr;
# node rank 0 prepares the data (stages 0-2) on storage all nodes share and then writes the
# marker <data_dir>/.stage2_done (ELP_PREPARED_MARKER) holding the run's key; the other nodes
# wait for that key before they enter torchrun, so torchrun's rendezvous timeout never has to
# cover the data preparation. The key hashes what the prepared data depend on and the run id
# (the same on every node of one launch, e.g. the SLURM job id), so a marker left by an
# earlier run with other data or another run id never releases them.

ELP_PREPARED_MARKER=.stage2_done

elp_cuda_device_count() {
    if [ -n "${ELP_FAKE_GPU_COUNT:-}" ]; then
        echo "${ELP_FAKE_GPU_COUNT}"
        return 0
    fi
    python -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)" 2>/dev/null || echo 0
}

elp_check_nodes() {
    local name
    for name in ngpu ddp_cpu nnodes node_rank; do
        [[ "${!name:-0}" =~ ^[0-9]+$ ]] || die "--${name} must be a non-negative integer, got '${!name}'"
    done
    local gpus=${ngpu:-0} cpus=${ddp_cpu:-0} nodes=${nnodes:-1} rank=${node_rank:-0}
    [ "${nodes}" -ge 1 ] || die "--nnodes must be >= 1, got ${nodes}"
    [ "${rank}" -lt "${nodes}" ] || die "--node_rank ${rank} must be smaller than --nnodes ${nodes}"
    if [ "${gpus}" -gt 0 ] && [ "${cpus}" -gt 0 ]; then
        die "--ngpu ${gpus} and --ddp_cpu ${cpus} both given: use --ngpu for GPU training or --ddp_cpu for CPU DDP, not both"
    fi
    if [ "${gpus}" -eq 0 ] && [ "${cpus}" -eq 0 ] && [ "${nodes}" -gt 1 ]; then
        die "--nnodes ${nodes} with --ngpu 0: give --ngpu N for GPUs, or --ddp_cpu N for CPU DDP (gloo)"
    fi
    return 0
}

elp_check_launch() {
    elp_check_nodes
    local gpus=${ngpu:-0}
    if [ "${gpus}" -gt 0 ]; then
        local usable
        usable=$(elp_cuda_device_count)
        if [ "${usable}" -lt "${gpus}" ]; then
            # a driver too old for the installed torch build: name both and the install that fits
            local driver=
            if [ "${usable}" -eq 0 ] && [ -z "${ELP_FAKE_GPU_COUNT:-}" ]; then
                driver=$(python -c "from elp.runtime import cuda_driver_problem; print(cuda_driver_problem() or '')" 2>/dev/null || true)
            fi
            if [ -n "${driver}" ]; then
                die "--ngpu ${gpus} but torch sees no usable CUDA device: ${driver} (or --ngpu 0 for CPU)"
            fi
            die "--ngpu ${gpus} but torch sees ${usable} usable CUDA device(s) (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}; check nvidia-smi, the driver and torch.cuda.is_available()); use --ngpu 0 for CPU or --ddp_cpu N for CPU DDP"
        fi
    fi
    return 0
}

elp_train_command() {
    local -a args=() extra=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
    [ $# -gt 0 ] && shift
    extra=("$@")
    elp_check_launch || return 1
    local gpus=${ngpu:-0} cpus=${ddp_cpu:-0} nodes=${nnodes:-1}
    local nproc=1 backend= device=cpu
    if [ "${gpus}" -gt 0 ]; then
        nproc=${gpus}; backend=nccl; device=cuda:0
    elif [ "${cpus}" -gt 0 ]; then
        nproc=${cpus}; backend=gloo; device=cpu
    fi
    if [ $((nproc * nodes)) -gt 1 ]; then
        [ -n "${backend}" ] || backend=gloo
        ELP_CMD=(torchrun --nnodes "${nodes}" --node_rank "${node_rank:-0}" --master_addr "${master_addr:-localhost}"
                 --master_port "${master_port:-29500}" --nproc_per_node "${nproc}"
                 "${args[@]}" --distributed_backend="${backend}")
        # nccl: SpeechBrain picks cuda:LOCAL_RANK itself; gloo runs on CPU
        [ "${backend}" = gloo ] && ELP_CMD+=(--device cpu)
    else
        ELP_CMD=(python "${args[@]}" --device "${device}")
    fi
    ELP_CMD+=("${extra[@]}")
    return 0
}

elp_run() {
    if [ "${ELP_DRY_RUN:-0}" = 1 ] || [ "${dry_run:-false}" = true ]; then
        printf '%q ' "$@" | sed 's/ $//'
        echo
        return 0
    fi
    "$@"
}

elp_stage() {
    local n=$1
    [ "${stage}" -le "${n}" ] && [ "${stop_stage}" -ge "${n}" ] || return 1
    if [ "${n}" -ne 3 ] && [ "${node_rank:-0}" -ne 0 ]; then
        log "Stage ${n}: skipped on node rank ${node_rank} (runs on node rank 0 only)"
        return 1
    fi
    return 0
}

elp_run_key() {
    printf '%s\n' "$@" | sha256sum | cut -c1-16
}

elp_mark_prepared() {
    local file=$1 key=$2
    mkdir -p "$(dirname "${file}")"
    printf '%s\n' "${key}" > "${file}.tmp.$$"
    mv -f "${file}.tmp.$$" "${file}"
}

elp_wait_prepared() {
    local file=$1 key=$2 timeout=$3 poll=${ELP_WAIT_POLL_S:-5} found= start=${SECONDS}
    [[ "${timeout}" =~ ^[0-9]+$ ]] || die "--prep_timeout must be a whole number of seconds, got '${timeout}'"
    [ "${timeout}" -gt 0 ] || return 0
    [ "$(head -n 1 "${file}" 2>/dev/null || true)" = "${key}" ] && return 0
    log "node rank ${node_rank:-0}: waiting up to ${timeout} s for node rank 0 to finish stages 0-2 (${file} with key ${key})"
    while true; do
        found=$(head -n 1 "${file}" 2>/dev/null || true)
        if [ "${found}" = "${key}" ]; then
            log "node rank ${node_rank:-0}: node rank 0 finished stages 0-2 (waited $((SECONDS - start)) s)"
            return 0
        fi
        [ $((SECONDS - start)) -lt "${timeout}" ] || break
        sleep "${poll}"
    done
    die "node rank ${node_rank:-0}: node rank 0 did not finish stages 0-2 within ${timeout} s" \
        "(${file} $([ -n "${found}" ] && echo "holds key ${found} of another run, not ${key}" || echo "is missing"));" \
        "see node rank 0's log; start every node with the same options and --run_id, or raise --prep_timeout"
}
