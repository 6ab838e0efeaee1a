#!/usr/bin/env bash
# Every recipe end to end, then one results table (exp/summary.{md,json,png}).
#
#   ./run_all.sh                                  # CPU, synthetic mini corpora, small backbone
#   ./run_all.sh --backbone wavlm_plus --ngpu 1 \
#       --librispeech_root /corpora --voxceleb_root /corpora/voxceleb1 \
#       --iemocap_root /corpora --slurp_root /corpora/slurp \
#       --methods "full weighted_sum conventional lora prefix e_only l_only p_only el elp"
#
# Without corpus roots it builds the mini corpora (tools/mini_corpus) and, since no machine
# here reaches a model hub, pre-trains a small WavLM-architecture backbone on a separate
# synthetic corpus (tools/pretrain_backbone.py) to stand in for a downloaded one. With real
# corpora and --backbone wavlm_plus (weights from the hub, or --backbone_source DIR) it runs
# the paper's comparison.
set -euo pipefail

methods="full weighted_sum elp"
backbone=wavlm_plus
backbone_source=          # local checkpoint directory (default: hub id, or the pre-trained small one)
pretrain_steps=800        # mini mode: steps of the stand-in backbone's pre-training
librispeech_root=
voxceleb_root=
iemocap_root=
slurp_root=
er_folds="1 2 3 4 5"
tasks="asr sv er ic"
ngpu=0
jobs=$(nproc)             # trainings run in parallel (one thread each) on CPU
epochs=                   # override every recipe's number_of_epochs
help_message="Usage: $0 [--methods 'full weighted_sum elp'] [--backbone NAME] [--backbone_source DIR]
                [--librispeech_root DIR] [--voxceleb_root DIR] [--iemocap_root DIR] [--slurp_root DIR]
                [--tasks 'asr sv er ic'] [--er_folds '1 2 3 4 5'] [--ngpu N] [--jobs N] [--epochs N]"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "${root}"
"${root}/tools/install.sh"
. recipes/path.sh
. recipes/utils/log.sh
. recipes/utils/parse_options.sh

declare -A recipe_dir=([asr]=egs/librispeech/asr [sv]=egs/voxceleb/sv [er]=egs/iemocap/er [ic]=egs/slurp/ic)
declare -A data_root=([asr]=${librispeech_root} [sv]=${voxceleb_root} [er]=${iemocap_root} [ic]=${slurp_root})
mini=true
for task in ${tasks}; do [ -n "${data_root[${task}]}" ] && mini=false; done
if ${mini} && [ -z "${backbone_source}" ]; then
    backbone_source=${root}/exp/backbone_${backbone}_small
fi
label=$(${mini} && echo mini || echo "${backbone}")
logs=exp/run_all/logs
mkdir -p "${logs}"
started=$(date +%s)

common=(--backbone "${backbone}" --ngpu "${ngpu}")
[ -n "${backbone_source}" ] && common+=(--backbone_source "$(readlink -f "${backbone_source}" || echo "${backbone_source}")")
fold_opts() { [ "$1" = er ] && echo "--folds" && echo "${2:-${er_folds}}"; return 0; }

# Settings for the mini corpora (a few hundred utterances each, a small backbone): word-level
# BPE for the 17-word ASR vocabulary, larger learning rates, no intra-epoch checkpoints.
# One token per line, for mapfile.
mini_lr="{head: 5.0e-3, e: 3.0e-3, l: 3.0e-3, ln: 3.0e-3, p: 3.0e-3, lora: 3.0e-3, prefix: 3.0e-3, backbone: 5.0e-4}"
recipe_flags() {
    if ${mini} && [ "$1" = asr ]; then echo --bpe; echo 100; fi
    return 0
}
hparam_overrides() {
    if ${mini}; then
        echo --ckpt_interval_steps; echo 0
        case $1 in
            asr) echo --number_of_epochs; echo 30; echo --lr; echo "${mini_lr}" ;;
            ic) echo --number_of_epochs; echo 20; echo --lr; echo "${mini_lr}" ;;
            sv|er) echo --number_of_epochs; echo 15 ;;
        esac
    fi
    if [ -n "${epochs}" ]; then echo --number_of_epochs; echo "${epochs}"; fi
    return 0
}

log "Preparing data (stages 0-2) for: ${tasks}"
for task in ${tasks}; do
    mapfile -t folds < <(fold_opts "${task}")
    mapfile -t flags < <(recipe_flags "${task}")
    (cd "${recipe_dir[${task}]}" && ./run.sh --stop_stage 2 ${data_root[${task}]:+--data_root "${data_root[${task}]}"} \
        "${folds[@]}" "${flags[@]}" "${common[@]}") > "${logs}/${task}_prep.log" 2>&1 \
        || die "data preparation of ${task} failed: see ${logs}/${task}_prep.log"
done

if ${mini} && [ ! -f "${backbone_source}/config.json" ]; then
    log "Pre-training the stand-in backbone (${backbone} architecture, small) -> ${backbone_source}"
    python tools/pretrain_text.py --exclude egs/slurp/ic/corpus/slurp/dataset/slurp --out exp/pretrain_text.txt
    python tools/mini_corpus/librispeech.py --out exp/pretrain_corpus --seed 1 --sentences exp/pretrain_text.txt
    OMP_NUM_THREADS=${jobs} python tools/pretrain_backbone.py --corpus exp/pretrain_corpus \
        --out "${backbone_source}" --backbone "${backbone}" --arch small --steps "${pretrain_steps}" \
        > "${logs}/pretrain.log" 2>&1 || die "pre-training failed: see ${logs}/pretrain.log"
fi

# one job per (task, method[, fold]), the longest first (intent, ASR, SV, then the emotion
# folds, which fill the gaps); ${jobs} run at a time
job_list=()
for task in $(for t in ic asr sv er; do [[ " ${tasks} " == *" ${t} "* ]] && echo "${t}"; done); do
    for method in ${methods}; do
        if [ "${task}" = er ]; then
            for fold in ${er_folds}; do job_list+=("${task} ${method} ${fold}"); done
        else
            job_list+=("${task} ${method}")
        fi
    done
done

run_job() {
    local task=$1 method=$2 fold=${3:-}
    local name=${task}_${method}${fold:+_fold${fold}}
    mapfile -t folds < <(fold_opts "${task}" "${fold}")
    mapfile -t overrides < <(hparam_overrides "${task}")
    if (cd "${recipe_dir[${task}]}" && ./run.sh --stage 3 --stop_stage 5 --method "${method}" \
            --tag "${label}_${method}" "${folds[@]}" "${common[@]}" -- "${overrides[@]}") \
            > "${logs}/${name}.log" 2>&1; then
        log "done: ${name}"
    else
        log "FAILED: ${name} (see ${logs}/${name}.log)"
        return 1
    fi
}

log "Training ${#job_list[@]} jobs, ${jobs} at a time (logs in ${logs})"
failed=0
running=0
threads=1
[ "${ngpu}" -gt 0 ] && threads=${OMP_NUM_THREADS}
for job in "${job_list[@]}"; do
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=${threads} run_job ${job} &
    running=$((running + 1))
    if [ "${running}" -ge "${jobs}" ]; then
        wait -n || failed=$((failed + 1))
        running=$((running - 1))
    fi
done
while [ "${running}" -gt 0 ]; do
    wait -n || failed=$((failed + 1))
    running=$((running - 1))
done
[ "${failed}" -eq 0 ] || die "${failed} job(s) failed"

if [[ " ${tasks} " == *" er "* ]]; then
    for method in ${methods}; do
        python recipes/aggregate_folds.py --exp "${recipe_dir[er]}/exp/${label}_${method}" --folds ${er_folds} \
            --results-md "${recipe_dir[er]}/RESULTS.md" > /dev/null
    done
fi

roots=()
for task in ${tasks}; do
    for method in ${methods}; do roots+=("${recipe_dir[${task}]}/exp/${label}_${method}"); done
done
python recipes/summarize.py --exp-root "${roots[@]}" --out exp/summary
log "Finished in $(( $(date +%s) - started )) s: exp/summary.md, exp/summary.json, exp/summary.png"
cat exp/summary.md
