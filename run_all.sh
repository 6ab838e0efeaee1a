#!/usr/bin/env bash
# Every recipe under egs/ end to end, then one results table (exp/summary.{md,json,png}).
#
#   ./run_all.sh                                  # CPU, synthetic mini corpora, stand-in backbone
#   ./run_all.sh --backbone wavlm_plus --ngpu 1 \
#       --data_roots "librispeech=/corpora voxceleb=/corpora/voxceleb1 iemocap=/corpora slurp=/corpora/slurp" \
#       --methods "full weighted_sum conventional lora prefix e_only l_only p_only el elp"
#
# The recipes are discovered (egs/<corpus>/<task>/run.sh); a recipe without a data root runs
# its mini mode (its conf/mini.yaml, the mini corpus, the shared stand-in backbone), exactly as
# `cd egs/<corpus>/<task> && ./run.sh` does on its own. Each recipe's metric comes from its
# results.json.
set -euo pipefail

methods="full weighted_sum elp"
backbone=wavlm_plus
backbone_source=          # weights (default: the hub id; mini mode: the stand-in backbone)
data_roots=               # "corpus=DIR ..." (the corpus is egs/<corpus>); others run in mini mode
recipes=                  # "corpus/task ..." (default: every egs/*/*/run.sh)
seeds=                    # "1986 1987": every cell once per seed (default: each YAML's seed)
ngpu=0                    # GPUs per job (0: CPU); jobs get disjoint GPU sets and ports
jobs=$(nproc)             # jobs at a time (CPU: one thread each; GPU: capped by the GPU slots)
epochs=                   # override every recipe's number_of_epochs
help_message="Usage: $0 [--methods 'full weighted_sum elp'] [--backbone NAME] [--backbone_source DIR]
                [--data_roots 'corpus=DIR ...'] [--recipes 'corpus/task ...'] [--seeds 'N ...']
                [--ngpu N] [--jobs N] [--epochs N]"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "${root}"
"${root}/tools/install.sh"
. recipes/path.sh
. recipes/utils/log.sh
require_bash 5 1          # the job slots wait with `wait -n -p`
. recipes/utils/parse_options.sh
. recipes/utils/gpu_slots.sh
. recipes/utils/exp_name.sh

if [ -z "${recipes}" ]; then
    recipes=$(for r in egs/*/*/run.sh; do r=${r#egs/}; echo "${r%/run.sh}"; done)
fi
declare -A root_of=()
for pair in ${data_roots}; do
    [[ ${pair} == *=* ]] || die "--data_roots: '${pair}' is not corpus=DIR"
    root_of[${pair%%=*}]=$(readlink -f "${pair#*=}")
done
for recipe in ${recipes}; do
    [ -x "egs/${recipe}/run.sh" ] || die "--recipes: egs/${recipe}/run.sh not found"
done
logs=exp/run_all/logs
mkdir -p "${logs}"
started=$(date +%s)

common=(--backbone "${backbone}")
[ -n "${backbone_source}" ] && common+=(--backbone_source "$(readlink -f "${backbone_source}" || echo "${backbone_source}")")
overrides=()
[ -n "${epochs}" ] && overrides+=(--number_of_epochs "${epochs}")
# mini mode (no data root, no --backbone_source) trains on the stand-in: label "mini"
label_of() {
    local corpus=${1%%/*} mini=false
    [ -z "${root_of[${corpus}]:-}" ] && [ -z "${backbone_source}" ] && mini=true
    exp_label "${backbone}" "" "${mini}"
}

log "Preparing data (stages 0-2) for: ${recipes//$'\n'/ }"
for recipe in ${recipes}; do
    corpus=${recipe%%/*}
    name=${recipe//\//_}
    (cd "egs/${recipe}" && ./run.sh --stop_stage 2 ${root_of[${corpus}]:+--data_root "${root_of[${corpus}]}"} \
        "${common[@]}") > "${logs}/${name}_prep.log" 2>&1 \
        || die "data preparation of ${recipe} failed: see ${logs}/${name}_prep.log"
done

if [ -z "${backbone_source}" ] && [[ " $(for r in ${recipes}; do label_of "${r}"; done | tr '\n' ' ') " == *" mini "* ]]; then
    tools/standin_backbone.sh --backbone "${backbone}" --out "exp/backbone_${backbone}_small" \
        || die "building the stand-in backbone failed"
fi

# one job per (recipe, method, seed[, fold]); recipes without folds first, then the many short
# fold jobs, which fill the gaps
declare -A folds_of=()
for recipe in ${recipes}; do folds_of[${recipe}]=$(cd "egs/${recipe}" && ./run.sh --show_folds true | tr '\n' ' '); done
job_list=()
for recipe in $(for r in ${recipes}; do [ -z "${folds_of[${r}]// /}" ] && echo "${r}"; done) \
              $(for r in ${recipes}; do [ -n "${folds_of[${r}]// /}" ] && echo "${r}"; done); do
    read -r -a folds <<< "${folds_of[${recipe}]}"
    for method in ${methods}; do
        for seed in ${seeds:-default}; do
            for fold in "${folds[@]:-}"; do job_list+=("${recipe} ${method} ${seed} ${fold}"); done
        done
    done
done

run_job() {
    local recipe=$1 method=$2 seed=$3 fold=${4:-}
    local tag
    tag=$(exp_name "$(label_of "${recipe}")" "${method}" "${seed#default}")
    local name=${recipe//\//_}_${tag}${fold:+_fold${fold}}
    local opts=(--stage 3 --stop_stage 5 --method "${method}" --tag "${tag}" --master_port "${ELP_MASTER_PORT:-29500}")
    [ "${seed}" = default ] || opts+=(--seed "${seed}")
    [ -n "${fold}" ] && opts+=(--folds "${fold}")
    [ "${ngpu}" -gt 0 ] && opts+=(--ngpu "${ngpu}")
    if (cd "egs/${recipe}" && ./run.sh "${opts[@]}" "${common[@]}" -- "${overrides[@]}") > "${logs}/${name}.log" 2>&1; then
        log "done: ${name}"
    else
        log "FAILED: ${name} (see ${logs}/${name}.log)"
        return 1
    fi
}

gpu_slots_init "${ngpu}" "${jobs}" || die "no job slots for --ngpu ${ngpu} --jobs ${jobs}"
log "Training ${#job_list[@]} jobs in ${NUM_SLOTS} slot(s) (logs in ${logs})"
run_in_slots run_job "${job_list[@]}"
[ "${SLOTS_FAILED}" -eq 0 ] || die "${SLOTS_FAILED} job(s) failed"

# recipes with folds: the mean over all folds of each (method, seed)
roots=()
for recipe in ${recipes}; do
    read -r -a folds <<< "${folds_of[${recipe}]}"
    for method in ${methods}; do
        for seed in ${seeds:-default}; do
            tag=$(exp_name "$(label_of "${recipe}")" "${method}" "${seed#default}")
            if [ -n "${folds[*]:-}" ]; then
                python recipes/aggregate_folds.py --exp "egs/${recipe}/exp/${tag}" --folds "${folds[@]}" \
                    --results-md "egs/${recipe}/RESULTS.md" > /dev/null
            fi
            roots+=("egs/${recipe}/exp/${tag}")
        done
    done
done
python recipes/summarize.py --exp-root "${roots[@]}" --out exp/summary
log "Finished in $(( $(date +%s) - started )) s: exp/summary.md, exp/summary.json, exp/summary.png"
cat exp/summary.md
