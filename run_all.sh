#!/usr/bin/env bash
# Every recipe under egs/ end to end, then one results table (exp/summary.{md,json,png}).
#
#   ./run_all.sh                                  # CPU, synthetic mini corpora, stand-in backbone
#   ./run_all.sh --backbone wavlm_plus --ngpu 1 \
#       --data_roots "librispeech=/corpora voxceleb=/corpora/voxceleb1 iemocap=/corpora slurp=/corpora/slurp" \
#       --methods "full weighted_sum conventional lora prefix e_only l_only p_only el elp"
#   ./run_all.sh ... --librispeech_train 960      # LibriSpeech ASR trained on all 960 h
#   ./run_all.sh ... --nnodes 2 --node_rank R --master_addr HOST   # on each node (tools/slurm/run_all.sbatch)
#
# The recipes are discovered (egs/<corpus>/<task>/run.sh); a recipe without a data root runs
# its mini mode (its conf/mini.yaml, the mini corpus, the shared stand-in backbone), exactly as
# `cd egs/<corpus>/<task> && ./run.sh` does on its own. Each recipe's metric comes from its
# results.json.
#
# Several nodes (--nnodes N): start the same command on every node with its --node_rank, from
# a checkout all nodes share. Node rank 0 installs, prepares every recipe's data (stages 0-2)
# and then writes exp/run_all/.stage2_done; the other nodes wait for it (--prep_timeout). Every
# node then trains the same job list with --ngpu GPUs per job (the same GPUs on every node),
# job k rendezvousing on port --master_port + 1 + k, which every node computes alike. Node rank
# 0 then runs stages 4-5 of every job and writes the summary; logs of node rank R > 0 are in
# exp/run_all/logs/nodeR.
set -euo pipefail

methods="full weighted_sum elp"
backbone=wavlm_plus
backbone_source=          # weights (default: the hub id; mini mode: the stand-in backbone)
data_roots=               # "corpus=DIR ..." (the corpus is egs/<corpus>); others run in mini mode
recipes=                  # "corpus/task ..." (default: every egs/*/*/run.sh)
recipe_opts=              # "corpus[/task]: run.sh options [-- hparams]; ..." added to that recipe's every call
librispeech_train=100     # hours of LibriSpeech ASR training data: 100 (train-clean-100) or 960
seeds=                    # "1986 1987": every cell once per seed (default: each YAML's seed)
ngpu=0                    # GPUs per job (0: CPU); jobs get disjoint GPU sets and ports
ddp_cpu=0                 # CPU processes per job with DDP over gloo (CPU nodes of a multi-node run)
jobs=$(nproc)             # jobs at a time (CPU: one thread each; GPU: capped by the GPU slots)
epochs=                   # override every recipe's number_of_epochs
nnodes=1                  # nodes (the same command on each, with its --node_rank)
node_rank=0               # this node's rank; rank 0 prepares the data, evaluates and summarises
master_addr=localhost     # address of node rank 0
master_port=29500         # several nodes: job k uses master_port + 1 + k; one node: ports from gpu_slots
run_id=${SLURM_JOB_ID:-}  # the same on every node of one launch (default: the SLURM job id)
prep_timeout=7200         # nodes > 0: seconds to wait for node rank 0's data preparation (0: no wait)
dry_run=false             # print the recipe commands instead of running them
help_message="Usage: $0 [--methods 'full weighted_sum elp'] [--backbone NAME] [--backbone_source DIR]
                [--data_roots 'corpus=DIR ...'] [--recipes 'corpus/task ...'] [--seeds 'N ...']
                [--recipe_opts 'corpus[/task]: run.sh options [-- hparams]; ...'] [--librispeech_train 100|960]
                [--ngpu N | --ddp_cpu N] [--jobs N] [--epochs N] [--dry_run true]
                [--nnodes N --node_rank R --master_addr HOST --master_port PORT [--run_id ID] [--prep_timeout S]]
  --recipe_opts   options for one recipe's run.sh (or a corpus's recipes), quoted as in a shell, e.g.
                  'librispeech/asr: --prep_opts --train-960 -- --train_split train_960'
  --librispeech_train 960   LibriSpeech ASR on train-clean-100 + train-clean-360 + train-other-500
                  (data/train_960; in mini mode the mini corpus gets the two extra subsets)"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "${root}"
. recipes/utils/log.sh
require_bash 5 1          # the job slots wait with `wait -n -p`
. recipes/utils/parse_options.sh
[ $# -eq 0 ] || die "unexpected argument '$1': run_all.sh takes options only (--help lists them)"
. recipes/utils/launch.sh
. recipes/utils/gpu_slots.sh
. recipes/utils/exp_name.sh
elp_check_nodes
multinode=false
[ "${nnodes}" -gt 1 ] && multinode=true

# the LibriSpeech 960 h set: data prep and, in mini mode, the mini corpus add the two other
# training subsets (run.sh's own mini corpus options are --librilight); the YAML trains on it
case ${librispeech_train} in
    100) ;;
    960) recipe_opts="librispeech/asr: --prep_opts --train-960 --mini_corpus_opts '--librilight --train-960'
                      -- --train_split train_960${recipe_opts:+; ${recipe_opts}}" ;;
    *) die "--librispeech_train ${librispeech_train}: 100 or 960" ;;
esac

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

# --recipe_opts: per recipe, run.sh options (run_opts_of) and hparams (hparams_of), each a list of
# words joined by the unit separator; shell quotes group words, nothing is evaluated
sep=$'\x1f'
declare -A run_opts_of=() hparams_of=()
if [ -n "${recipe_opts}" ]; then
    entries=$(python3 - "${recipe_opts}" 2>/dev/null <<'PY'
import shlex, sys
lexer = shlex.shlex(sys.argv[1], posix=True, punctuation_chars=";")
lexer.whitespace_split = True
entry = []
for word in [*lexer, ";"]:
    if word == ";":
        if entry:
            print("\x1f".join(entry))
        entry = []
    else:
        entry.append(word)
PY
) || die "--recipe_opts: unbalanced quotes in '${recipe_opts}'"
    while IFS="${sep}" read -r -a words; do
        [ ${#words[@]} -gt 0 ] || continue
        key=${words[0]%:}
        [[ ${words[0]} == *: ]] || die "--recipe_opts: '${words[*]}' does not start with 'corpus[/task]:'"
        [ -d "egs/${key}" ] || die "--recipe_opts: egs/${key} not found (entries start with corpus/task: or corpus:)"
        opts=() hps=() after=false
        for word in "${words[@]:1}"; do
            if ! ${after} && [ "${word}" = -- ]; then after=true
            elif ${after}; then hps+=("${word}")
            else opts+=("${word}")
            fi
        done
        for recipe in ${recipes}; do
            [ "${recipe}" = "${key}" ] || [[ ${recipe} == "${key}"/* ]] || continue
            [ ${#opts[@]} -eq 0 ] || run_opts_of[${recipe}]+=$(printf "%s${sep}" "${opts[@]}")
            [ ${#hps[@]} -eq 0 ] || hparams_of[${recipe}]+=$(printf "%s${sep}" "${hps[@]}")
        done
    done <<< "${entries}"
fi

logs=exp/run_all/logs
[ "${node_rank}" -gt 0 ] && logs=exp/run_all/logs/node${node_rank}
prepared=exp/run_all/${ELP_PREPARED_MARKER}
prepared_key=$(elp_run_key "run_id=${run_id}" "recipes=${recipes//$'\n'/ }" "backbone=${backbone} ${backbone_source}" \
    "data_roots=$(for c in "${!root_of[@]}"; do echo "${c}=${root_of[${c}]}"; done | sort | tr '\n' ' ')" \
    "recipe_opts=${recipe_opts}")
${dry_run} || mkdir -p "${logs}"
started=$(date +%s)

# the one place that runs (or, with --dry_run true, prints) a recipe's run.sh
# ARGS: recipe, log file, run.sh arguments
run_recipe() {
    local recipe=$1 log_file=$2
    shift 2
    if ${dry_run}; then
        echo "cd egs/${recipe} && ./run.sh$(printf ' %q' "$@")"
        return 0
    fi
    (cd "egs/${recipe}" && ./run.sh "$@") >> "${log_file}" 2>&1
}
# a new log file (nothing in a dry run)
new_log() { ${dry_run} || : > "$1"; }
# the recipe's --recipe_opts as arrays: RECIPE_RUN_OPTS (before --), RECIPE_HPARAMS (after)
recipe_options() {
    IFS="${sep}" read -r -a RECIPE_RUN_OPTS <<< "${run_opts_of[$1]:-}"
    IFS="${sep}" read -r -a RECIPE_HPARAMS <<< "${hparams_of[$1]:-}"
}

common=(--backbone "${backbone}")
[ -n "${backbone_source}" ] && common+=(--backbone_source "$(readlink -f "${backbone_source}" || echo "${backbone_source}")")
overrides=()
[ -n "${epochs}" ] && overrides+=(--number_of_epochs "${epochs}")
launch_opts=()
[ "${ngpu}" -gt 0 ] && launch_opts+=(--ngpu "${ngpu}")
[ "${ddp_cpu}" -gt 0 ] && launch_opts+=(--ddp_cpu "${ddp_cpu}")
node_opts=()
${multinode} && node_opts=(--nnodes "${nnodes}" --node_rank "${node_rank}" --master_addr "${master_addr}"
                           --run_id "${run_id}" --prep_timeout "${prep_timeout}" "${launch_opts[@]}")
# mini mode (no data root, no --backbone_source) trains on the stand-in: label "mini"
label_of() {
    local corpus=${1%%/*} mini=false
    [ -z "${root_of[${corpus}]:-}" ] && [ -z "${backbone_source}" ] && mini=true
    exp_label "${backbone}" "" "${mini}"
}

if [ "${node_rank}" -eq 0 ]; then
    ${dry_run} || rm -f "${prepared}"
    ${dry_run} || "${root}/tools/install.sh"
    . recipes/path.sh
    log "Preparing data (stages 0-2) for: ${recipes//$'\n'/ }"
    for recipe in ${recipes}; do
        corpus=${recipe%%/*}
        recipe_options "${recipe}"
        new_log "${logs}/${recipe//\//_}_prep.log"
        run_recipe "${recipe}" "${logs}/${recipe//\//_}_prep.log" --stop_stage 2 \
            ${root_of[${corpus}]:+--data_root "${root_of[${corpus}]}"} "${common[@]}" "${node_opts[@]}" \
            "${RECIPE_RUN_OPTS[@]}" -- "${RECIPE_HPARAMS[@]}" \
            || die "data preparation of ${recipe} failed: see ${logs}/${recipe//\//_}_prep.log"
    done
    if [ -z "${backbone_source}" ] && [[ " $(for r in ${recipes}; do label_of "${r}"; done | tr '\n' ' ') " == *" mini "* ]]; then
        if ${dry_run}; then
            echo "tools/standin_backbone.sh --backbone ${backbone} --out exp/backbone_${backbone}_small"
        else
            tools/standin_backbone.sh --backbone "${backbone}" --out "exp/backbone_${backbone}_small" \
                || die "building the stand-in backbone failed"
        fi
    fi
    if ${multinode} && ! ${dry_run}; then elp_mark_prepared "${prepared}" "${prepared_key}"; fi
else
    # the data, the stand-in backbone and .venv/ come from node rank 0
    if ${dry_run}; then
        log "node rank ${node_rank}: would wait up to ${prep_timeout} s for ${prepared} (key ${prepared_key})"
    else
        elp_wait_prepared "${prepared}" "${prepared_key}" "${prep_timeout}"
    fi
    . recipes/path.sh
fi
elp_check_launch

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

# One job: stages first_stage..last_stage of (recipe, method, seed[, fold]). One node: stages 3-5
# on the slot's port. Several nodes: stage 3 on every node, on port master_port + 1 + the job's
# index, then (node rank 0) stages 4-5 of the jobs whose training did not fail.
first_stage=3
last_stage=5
failed_training=${logs}/failed_training.txt
run_job() {
    local recipe=$1 method=$2 seed=$3 fold=${4:-}
    local tag
    tag=$(exp_name "$(label_of "${recipe}")" "${method}" "${seed#default}")
    local name=${recipe//\//_}_${tag}${fold:+_fold${fold}}
    local opts=(--stage "${first_stage}" --stop_stage "${last_stage}" --method "${method}" --tag "${tag}")
    if ! ${multinode}; then
        opts+=(--master_port "${ELP_MASTER_PORT:-29500}")
    elif [ "${first_stage}" -eq 3 ]; then
        opts+=(--nnodes "${nnodes}" --node_rank "${node_rank}" --master_addr "${master_addr}"
               --master_port "$((master_port + 1 + ELP_JOB_INDEX))" --run_id "${run_id}" --prep_timeout "${prep_timeout}")
    elif grep -qxF "${name}" "${failed_training}" 2>/dev/null; then
        log "skipped: ${name} (its training failed)"
        return 0
    fi
    [ "${seed}" = default ] || opts+=(--seed "${seed}")
    [ -n "${fold}" ] && opts+=(--folds "${fold}")
    [ "${ngpu}" -gt 0 ] && opts+=(--ngpu "${ngpu}")
    [ "${ddp_cpu}" -gt 0 ] && [ "${first_stage}" -eq 3 ] && opts+=(--ddp_cpu "${ddp_cpu}")
    [ -n "${root_of[${recipe%%/*}]:-}" ] && opts+=(--data_root "${root_of[${recipe%%/*}]}")
    recipe_options "${recipe}"
    [ "${first_stage}" -eq 3 ] && new_log "${logs}/${name}.log"
    if run_recipe "${recipe}" "${logs}/${name}.log" "${opts[@]}" "${common[@]}" "${RECIPE_RUN_OPTS[@]}" \
            -- "${overrides[@]}" "${RECIPE_HPARAMS[@]}"; then
        ${dry_run} || log "done: ${name} (stages ${first_stage}-${last_stage})"
    else
        log "FAILED: ${name} (see ${logs}/${name}.log)"
        ${multinode} && [ "${last_stage}" -eq 3 ] && echo "${name}" >> "${failed_training}"
        return 1
    fi
}

gpu_slots_init "${ngpu}" "${jobs}" "${master_port}" || die "no job slots for --ngpu ${ngpu} --jobs ${jobs}"
failures=0
if ${multinode}; then
    new_log "${failed_training}"
    last_stage=3
    log "Training ${#job_list[@]} jobs in ${NUM_SLOTS} slot(s) on node rank ${node_rank} of ${nnodes} (logs in ${logs})"
    run_in_slots run_job "${job_list[@]}"
    failures=${SLOTS_FAILED}
    if [ "${node_rank}" -gt 0 ]; then
        [ "${failures}" -eq 0 ] || die "${failures} job(s) failed on node rank ${node_rank}"
        log "node rank ${node_rank}: every job trained; node rank 0 evaluates them and writes exp/summary.md"
        exit 0
    fi
    first_stage=4
    last_stage=5
    log "Evaluating and scoring ${#job_list[@]} jobs (stages 4-5) in ${NUM_SLOTS} slot(s)"
else
    log "Training ${#job_list[@]} jobs in ${NUM_SLOTS} slot(s) (logs in ${logs})"
fi
run_in_slots run_job "${job_list[@]}"
failures=$((failures + SLOTS_FAILED))
[ "${failures}" -eq 0 ] || die "${failures} job(s) failed"
if ${dry_run}; then
    log "dry run: nothing was run"
    exit 0
fi

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
