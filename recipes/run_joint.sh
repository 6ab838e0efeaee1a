#!/usr/bin/env bash
# Shared stages of every joint recipe (several tasks' adapters trained together on one frozen
# backbone: one run, one forward per mixed batch, one model package per task; docs/MULTITASK.md).
# A joint recipe's run.sh names its member recipes (--members: the single-task recipes whose
# prepared data its conf/joint.yaml reads) and calls this script with "$@"; the tasks are declared
# once, in conf/joint.yaml.
#
#   0  the member recipes' stages 0-2 (../../<corpus>/<task>), for a member whose data is missing
#      or that is given a --data_roots entry; mini mode when every member's data is its mini corpus
#   1  validation of every task's data dirs
#   2  every task's inventory covers its validation and test sets (an inventory the YAML puts
#      where no member wrote one, e.g. for a second label file of a member's audio, is built here
#      from the task's training set)
#   3  joint training (recipes/train_multitask.py train) -> exp/<tag>/{save,train_log.txt,
#      train_stats.json} and exp/<tag>/<task>/adapters (one package per task)
#   4  inference per task -> exp/<tag>/<task>/decode
#   5  scoring per task -> exp/<tag>/<task>/results.json ("joint": the tasks), the task set's
#      mean in exp/<tag>/results.json, rows in RESULTS.md
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}

members=              # "corpus/task ...": the recipes whose data conf/joint.yaml reads (set by run.sh)
stage=0
stop_stage=5
data_roots=           # "corpus=DIR ...": members prepared from real corpora (default: their mini corpora)
backbone=wavlm_plus
backbone_source=      # local checkpoint directory or hub id (mini mode: the stand-in)
backbone_arch=        # tiny | small: random weights of that size (tests; no download)
method=elp
tag=                  # default: utils/exp_name.sh (mini_elp, wavlm_plus_elp_s1987, ...)
seed=
restart=false
config=conf/joint.yaml   # a joint recipe's YAML (tasks: ...), not a single-task train.yaml
mini_config=conf/mini.yaml
folds=                # the task set has no folds (ER's fold is in conf/joint.yaml)
show_folds=false      # print the folds (none) and exit (run_all.sh asks this)
ngpu=0                # 0: CPU, >= 1: one GPU (joint training runs in one process)
ddp_cpu=0             # taken for run_all.sh; joint training runs in one process
nnodes=1              # several nodes: node rank 0 trains, the others skip this recipe
node_rank=0
master_addr=localhost
master_port=29500
run_id=
prep_timeout=0
dry_run=false
help_message="Usage: $0 [options] [-- hparam overrides]
  --members 'corpus/task ...'     the single-task recipes whose data conf/joint.yaml reads (set by run.sh)
  --stage N --stop_stage N        stages to run (0-5)
  --data_roots 'corpus=DIR ...'   members prepared from real corpora (default: their mini corpora)
  --backbone NAME --backbone_source DIR|HUB_ID --backbone_arch tiny|small
  --method NAME                   one method for every task (full weighted_sum conventional lora prefix
                                  e_only l_only p_only el elp)
  --tag TAG --seed N --restart true --config FILE --mini_config FILE
  --ngpu N                        0: CPU; N >= 1: one GPU (joint training runs in one process)
  --dry_run true                  print stage 3's command instead of running it
  -- --key value ...              any hparam of conf/joint.yaml (e.g. --mix_temperature 2.0)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "${here}/path.sh"
. "${ELP_ROOT}/recipes/utils/log.sh"
. "${ELP_ROOT}/recipes/utils/parse_options.sh"
. "${ELP_ROOT}/recipes/utils/launch.sh"
. "${ELP_ROOT}/recipes/utils/exp_name.sh"
[ "${1:-}" = "--" ] && shift
overrides=("$@")

[ -n "${members}" ] || die "--members is empty: a joint recipe's run.sh names the recipes whose data it reads"
${show_folds} && exit 0
[ -z "${folds}" ] || die "--folds ${folds}: this recipe has no folds (conf/joint.yaml names the ER fold)"
elp_check_launch
if [ "${node_rank}" -gt 0 ]; then
    log "node rank ${node_rank}: joint training runs in one process on node rank 0; nothing to do here"
    exit 0
fi
if [ "${ngpu}" -gt 1 ] || [ "${ddp_cpu}" -gt 0 ] || [ "${nnodes}" -gt 1 ]; then
    log "joint training runs in one process: $( [ "${ngpu}" -gt 0 ] && echo "one GPU" || echo "one CPU process") on this node"
    [ "${ngpu}" -gt 1 ] && ngpu=1
    ddp_cpu=0 nnodes=1
fi
python "${ELP_ROOT}/recipes/check_options.py" --backbone "${backbone}" --method "${method}" \
    ${backbone_arch:+--backbone_arch "${backbone_arch}"} || die "fix the option above (./run.sh --help lists them)"
declare -A root_of=()
for pair in ${data_roots}; do
    [[ ${pair} == *=* ]] || die "--data_roots: '${pair}' is not corpus=DIR"
    dir=${pair#*=}
    case ${dir} in /*) ;; *) dir=${ELP_CALLER_PWD}/${dir} ;; esac
    root_of[${pair%%=*}]=${dir}
done

# a member is prepared when its stage 2 has written an inventory (data/lang, data/fold<k>/lang)
prepared() { [ -n "$(find "$1/data" -maxdepth 2 -type d -name 'lang*' 2>/dev/null | head -n 1)" ]; }

if elp_stage 0; then
    for member in ${members}; do
        dir=../../${member} corpus=${member%%/*}
        if [ ! -x "${dir}/run.sh" ]; then  # a copied recipe tree without its members
            log "Stage 0: ${dir} is missing: copying the ${member} recipe from ${ELP_ROOT}/egs/${member}"
            mkdir -p "${dir}"
            cp -r "${ELP_ROOT}/egs/${member}/run.sh" "${ELP_ROOT}/egs/${member}/conf" "${ELP_ROOT}/egs/${member}/local" "${dir}/"
        fi
        root=${root_of[${corpus}]:-}
        if [ -n "${root}" ] || ! prepared "${dir}"; then
            log "Stage 0: preparing ${member} (its stages 0-2${root:+ from ${root}})"
            prep=(./run.sh --stop_stage 2 ${root:+--data_root "${root}"})
            # the command to repeat by hand, from where the user typed this one
            where=${dir}
            [ "${ELP_CALLER_PWD}" = "${PWD}" ] || where=$(cd "${dir}" && pwd)
            (cd "${dir}" && "${prep[@]}") \
                || die "preparing ${member} failed: run its stages 0-2 by hand" \
                       "(cd $(printf '%q' "${where}") && $(printf '%q ' "${prep[@]}" | sed 's/ $//'))"
        else
            log "Stage 0: ${member}: data prepared ($( [ -f "${dir}/data/.mini" ] && echo "mini corpus" || echo "real corpus"))"
        fi
    done
fi

# mini mode: every member's data came from its mini corpus
mini=true
for member in ${members}; do
    prepared "../../${member}" || die "${member} has no prepared data: run stage 0"
    [ -f "../../${member}/data/.mini" ] || mini=false
done
if [ -z "${tag}" ]; then
    label=$(exp_label "${backbone}" "${backbone_arch}" "$( ${mini} && [ -z "${backbone_source}" ] && echo true || echo false)")
    tag=$(exp_name "${label}" "${method}" "${seed}")
fi
exp=exp/${tag}
hp=(--backbone "${backbone}" --method "${method}" --tag "${tag}")
[ -n "${seed}" ] && hp+=(--seed "${seed}")
${restart} && hp+=(--restart true)
if ${mini}; then
    [ -f "${mini_config}" ] && hp+=(--overrides_file "${mini_config}")
    if [ -z "${backbone_source}" ] && [ -z "${backbone_arch}" ] && [ "${stop_stage}" -ge 3 ] && [ "${stage}" -le 5 ]; then
        backbone_source=${ELP_ROOT}/exp/backbone_${backbone}_small
        "${ELP_ROOT}/tools/standin_backbone.sh" --backbone "${backbone}" --out "${backbone_source}" \
            || die "building the stand-in backbone failed"
    fi
fi
[ -n "${backbone_arch}" ] && hp+=(--backbone_arch "${backbone_arch}")
if [ -n "${backbone_source}" ]; then
    case ${backbone_source} in
        /*) ;;
        ./*|../*) backbone_source=${ELP_CALLER_PWD}/${backbone_source} ;;
        *) [ -e "${ELP_CALLER_PWD}/${backbone_source}" ] && backbone_source=${ELP_CALLER_PWD}/${backbone_source} ;;
    esac
    [ -e "${backbone_source}" ] && backbone_source=$(readlink -f "${backbone_source}")
    hp+=(--backbone_source "${backbone_source}")
fi
driver=${ELP_ROOT}/recipes/train_multitask.py
device=cpu
[ "${ngpu}" -gt 0 ] && device=cuda:0

if elp_stage 1; then
    log "Stage 1: validating every task's data dirs"
    sets=() tests=()
    listing=$(python "${driver}" data-dirs "${config}" "${hp[@]}" "${overrides[@]}") || exit 1  # it said why
    while read -r kind dir; do
        if [ "${kind}" = test ]; then tests+=("${dir}"); else sets+=("${dir}"); fi
    done <<< "${listing}"
    python "${ELP_ROOT}/recipes/validate_data.py" "${sets[@]}" ${tests[0]:+--test "${tests[@]}"}
fi
if elp_stage 2; then
    log "Stage 2: every task's inventory covers its sets"
    python "${driver}" inventory "${config}" "${hp[@]}" "${overrides[@]}"
fi
if elp_stage 3; then
    mkdir -p "${exp}"
    log "Stage 3: joint training ${tag} -> ${exp} (log: ${exp}/train.log)"
    elp_train_command "${driver}" train "${config}" "${hp[@]}" -- "${overrides[@]}"
    log "Stage 3: ${ELP_CMD[*]}"
    set -o pipefail
    elp_run "${ELP_CMD[@]}" 2>&1 | tee -a "${exp}/train.log"
fi
if elp_stage 4; then
    log "Stage 4: inference per task (${exp}/<task>/decode)"
    python "${driver}" infer "${config}" "${hp[@]}" --device "${device}" "${overrides[@]}"
fi
if elp_stage 5; then
    log "Stage 5: scoring per task"
    python "${driver}" score "${config}" "${hp[@]}" "${overrides[@]}"
fi
log "Done: ${exp}"
