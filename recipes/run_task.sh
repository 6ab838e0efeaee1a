#!/usr/bin/env bash
# Shared stages of every recipe (the ESPnet TEMPLATE idea): a corpus recipe's run.sh sets its
# corpus-specific options and calls this script with "$@".
#
#   0  data preparation from the real corpus layout (local/data_prep.py); without --data_root,
#      a synthetic mini corpus in the same layout is built first (tools/mini_corpus)
#   1  validation of the data dirs (sorted, consistent, readable, long enough)
#   2  token / label inventory (data/lang)
#   3  training (recipes/train.py; --ngpu N > 1 launches N processes through torchrun)
#   4  inference on the test sets (recipes/infer.py)
#   5  scoring -> exp/<tag>/results.json and a line in RESULTS.md (recipes/score.py)
#
# Everything after "--" (or any unknown trailing argument) is passed to HyperPyYAML, e.g.
#   ./run.sh --stage 3 --method el -- --number_of_epochs 20 --batch_size 4
set -euo pipefail

stage=0
stop_stage=5
task=             # asr | sv | classify
task_name=        # name in results (asr, sv, er, ic)
corpus=           # corpus name in results
data_root=        # real corpus location; empty: build the mini corpus
mini_corpus=      # tools/mini_corpus/<name>.py
mini_corpus_subdir=   # corpus root inside the mini corpus folder
mini_corpus_opts=     # extra options of the mini corpus builder, e.g. "--size tiny"
prep_opts=        # extra options for local/data_prep.py
train_set=        # data dirs, relative to data/
valid_set=
test_sets=
folds=            # cross-validation folds (IEMOCAP): runs stages 3-5 per fold, then the mean
backbone=wavlm_plus
backbone_arch=    # empty: the real architecture; tiny|small: random weights of that size
backbone_source=  # local checkpoint directory or hub id (empty: the backbone's hub id)
method=elp
tag=              # experiment name (default <backbone>_<method>)
config=conf/train.yaml
ngpu=0            # >1: torchrun with N processes (CUDA when available, else N CPU processes, gloo)
nnodes=1
node_rank=0
master_addr=localhost
master_port=29500
bpe=0             # ASR: sentencepiece BPE vocabulary (0 = characters)
help_message="Usage: $0 [--stage N] [--stop_stage N] [--data_root DIR] [--backbone NAME] [--backbone_source DIR] [--method NAME]
          [--tag TAG] [--ngpu N] [--bpe N] [--folds '1 2 3 4 5'] [-- hparam overrides]"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "${here}/path.sh"
. "${here}/utils/log.sh"
. "${here}/utils/parse_options.sh"
[ "${1:-}" = "--" ] && shift
overrides=("$@")

[ -n "${task}" ] || die "--task is required (asr | sv | classify)"
tag=${tag:-${backbone}${backbone_arch:+_${backbone_arch}}_${method}}
exp=exp/${tag}
data=data
arch_opts=()
if [ -n "${backbone_arch}" ]; then
    arch_opts=(--backbone_pretrained false --backbone_arch "${backbone_arch}")
fi
if [ -n "${backbone_source}" ]; then
    arch_opts+=(--backbone_source "$(readlink -f "${backbone_source}")")
fi

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
    if [ -z "${data_root}" ]; then
        log "Stage 0: no --data_root given: building the synthetic mini corpus (${mini_corpus})"
        # shellcheck disable=SC2086
        python "${ELP_ROOT}/${mini_corpus}" --out corpus ${mini_corpus_opts}
        data_root=corpus/${mini_corpus_subdir}
    fi
    log "Stage 0: data preparation from ${data_root}"
    # shellcheck disable=SC2086
    python local/data_prep.py --corpus-root "${data_root}" --out "${data}" ${prep_opts}
fi

# data dirs of one fold (or of the whole corpus when there are no folds)
set_dirs() {
    local prefix=$1
    train_dir=${data}/${prefix}${train_set}
    valid_dir=${data}/${prefix}${valid_set}
    test_dirs=()
    for t in ${test_sets}; do test_dirs+=("${data}/${prefix}${t}"); done
}

prefixes=("")
if [ -n "${folds}" ]; then
    prefixes=()
    for fold in ${folds}; do prefixes+=("fold${fold}/"); done
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log "Stage 1: validating data dirs"
    dirs=()
    for prefix in "${prefixes[@]}"; do
        set_dirs "${prefix}"
        dirs+=("${train_dir}" "${test_dirs[@]}")
        [ "${task}" = sv ] || dirs+=("${valid_dir}")
    done
    python "${ELP_ROOT}/recipes/validate_data.py" --fix "${dirs[@]}"
fi

# Stages 2-5 for one fold ("" = no folds). Arguments: fold-prefix, experiment dir, tag.
run_fold() {
    local prefix=$1 fold_exp=$2 fold_tag=$3
    set_dirs "${prefix}"
    local lang=${data}/${prefix}lang
    if [ "${task}" = sv ]; then
        valid_dir=${train_dir}_cv
    fi
    local hp=(--data_dir "${data}" --tag "${fold_tag}" --output_folder "${fold_exp}" --lang_dir "${lang}"
              --backbone "${backbone}" --method "${method}" --task_name "${task_name}" --corpus "${corpus}"
              --train_set "$([ "${task}" = sv ] && echo "${train_dir}_trn" || echo "${train_dir}")"
              --valid_set "${valid_dir}" --test_sets "[$(IFS=,; echo "${test_dirs[*]}")]"
              "${arch_opts[@]}")
    if [ -n "${prefix}" ]; then
        hp+=(--results_file fold_results.json --results_md "")
    else
        hp+=(--results_md RESULTS.md)
    fi

    if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
        log "Stage 2: inventory -> ${lang}"
        python "${ELP_ROOT}/recipes/inventory.py" --task "${task}" --train "${train_dir}" --lang "${lang}" --bpe "${bpe}"
    fi
    if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
        log "Stage 3: training ${fold_tag} -> ${fold_exp} (log: ${fold_exp}/train.log)"
        mkdir -p "${fold_exp}"
        if [ "${ngpu}" -gt 1 ]; then
            local backend=gloo
            python -c "import torch, sys; sys.exit(0 if torch.cuda.device_count() >= ${ngpu} else 1)" && backend=nccl
            log "Stage 3: torchrun with ${ngpu} processes per node, ${nnodes} node(s), backend ${backend}"
            torchrun --nnodes "${nnodes}" --node_rank "${node_rank}" --nproc_per_node "${ngpu}" \
                --master_addr "${master_addr}" --master_port "${master_port}" \
                "${ELP_ROOT}/recipes/train.py" "${config}" "${hp[@]}" --distributed_backend="${backend}" "${overrides[@]}"
        else
            local device=cpu
            [ "${ngpu}" -eq 1 ] && device=cuda:0
            python "${ELP_ROOT}/recipes/train.py" "${config}" "${hp[@]}" --device "${device}" "${overrides[@]}"
        fi
    fi
    if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
        log "Stage 4: inference on ${test_sets}"
        python "${ELP_ROOT}/recipes/infer.py" "${config}" "${hp[@]}" "${overrides[@]}"
    fi
    if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
        log "Stage 5: scoring"
        python "${ELP_ROOT}/recipes/score.py" "${config}" "${hp[@]}" "${overrides[@]}"
    fi
}

if [ -z "${folds}" ]; then
    run_fold "" "${exp}" "${tag}"
else
    for fold in ${folds}; do
        run_fold "fold${fold}/" "${exp}/fold${fold}" "${tag}_fold${fold}"
    done
    if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
        log "Stage 5: mean over folds ${folds}"
        python "${ELP_ROOT}/recipes/aggregate_folds.py" --exp "${exp}" --folds ${folds} --results-md RESULTS.md
    fi
fi
log "Done: ${exp}"
