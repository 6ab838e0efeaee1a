#!/usr/bin/env bash
# Shared stages of every recipe (the ESPnet TEMPLATE idea): a corpus recipe's run.sh names its
# corpus-specific options and calls this script with "$@". The task, the data sets and every
# hparam are declared once, in the recipe's conf/train.yaml.
#
#   0  data preparation from the real corpus layout (local/data_prep.py); without --data_root,
#      a synthetic mini corpus in the same layout is built first (tools/mini_corpus) and the
#      recipe runs in mini mode (conf/mini.yaml on top of conf/train.yaml, the stand-in backbone)
#   1  validation of the data dirs (sorted, consistent, readable, long enough, finite)
#   2  token / label inventory (the YAML's lang_dir)
#   3  training (recipes/train.py; torchrun when ngpu x nnodes > 1)
#   4  inference on the test sets (recipes/infer.py)
#   5  scoring -> exp/<tag>/results.json and a line in RESULTS.md (recipes/score.py)
#
# Everything after "--" is passed to HyperPyYAML, e.g.
#   ./run.sh --stage 3 --method el -- --number_of_epochs 20 --batch_size 4
set -euo pipefail

stage=0               # first stage to run
stop_stage=5          # last stage to run
data_root=            # real corpus location; empty: build the mini corpus (mini mode)
backbone=wavlm_plus   # short name: wav2vec2 hubert contentvec wavlm wavlm_plus *_large
backbone_source=      # local checkpoint directory or hub id (empty: the name's hub id; mini mode: the stand-in)
backbone_arch=        # tiny | small: random weights of that size (tests; no download)
method=elp            # full weighted_sum conventional lora prefix e_only l_only p_only el elp
tag=                  # experiment name (default: utils/exp_name.sh, e.g. mini_elp, wavlm_plus_elp_s1987)
seed=                 # random seed (default: the YAML's)
restart=false         # stage 3: move a run trained with other hparams aside and start over
config=conf/train.yaml    # the recipe's hparams
mini_config=conf/mini.yaml   # hparams applied on top in mini mode
folds=                # cross-validation folds (data/fold<k>/...): stages 2-5 per fold, then the mean
show_folds=false      # print the folds (one per line) and exit (run_all.sh asks this)
ngpu=0                # GPUs per node for training (0: CPU)
ddp_cpu=0             # CPU processes per node for DDP over gloo (tests; 0: off)
dry_run=false         # print the training command instead of running it
nnodes=1              # nodes of a multi-node run
node_rank=0           # this node's rank (stages other than 3 run on rank 0 only)
master_addr=localhost
master_port=29500
run_id=${SLURM_JOB_ID:-}   # the same on every node of one launch (default: the SLURM job id)
prep_timeout=7200     # nodes > 0: seconds to wait before stage 3 for node rank 0's stages 0-2 (0: no wait)
mini_corpus=          # tools/mini_corpus/<name>.py (set by run.sh)
mini_corpus_subdir=   # corpus root inside the mini corpus folder (set by run.sh)
mini_corpus_opts=     # extra options of the mini corpus builder (set by run.sh)
prep_opts=            # extra options of local/data_prep.py
fix_data=false        # stage 1: repair training/validation dirs (sort, drop incomplete utterances)
max_drop=0.05         # stage 1 with --fix_data: dropping more than this share of a set is an error
help_message="Usage: $0 [options] [-- hparam overrides]
  --stage N --stop_stage N        stages to run (0-5; default 0-5)
  --data_root DIR                 the real corpus (default: build the mini corpus, mini mode)
  --backbone NAME                 wav2vec2 hubert contentvec wavlm wavlm_plus wav2vec2_large hubert_large wavlm_large
  --backbone_source DIR|HUB_ID    weights (default: the name's hub id; in mini mode the stand-in backbone)
  --backbone_arch tiny|small      random weights of that size (no download)
  --method NAME                   full weighted_sum conventional lora prefix e_only l_only p_only el elp
  --tag TAG                       experiment name (default <label>_<method>[_s<seed>]; label: mini in
                                  mini mode, else <backbone>[_<arch>]; see recipes/utils/exp_name.sh)
  --seed N                        random seed (default: the YAML's seed)
  --restart true                  stage 3: move a run trained with other hparams aside, start over
  --config FILE --mini_config FILE   hparams (default conf/train.yaml, conf/mini.yaml)
  --folds 'K ...'                 cross-validation folds (data/fold<k>)
  --show_folds true               print the recipe's folds and exit
  --ngpu N --nnodes N --node_rank R --master_addr HOST --master_port PORT   GPUs / nodes
                                  (torchrun when processes x nodes > 1; --ngpu without CUDA is an error)
  --run_id ID --prep_timeout S    multi-node: before stage 3, nodes > 0 wait up to S s (7200) for node rank 0's
                                  marker of stages 0-2 (data/.stage2_done), whose key includes ID (the same
                                  on every node; default \$SLURM_JOB_ID) and what the data depend on
  --ddp_cpu N                     N CPU processes with DDP over gloo (no GPU)
  --dry_run true                  print stage 3's command instead of running it
  --prep_opts 'OPTS'              extra options of local/data_prep.py
  --mini_corpus PY --mini_corpus_subdir DIR --mini_corpus_opts 'OPTS'   the mini corpus (set by run.sh)
  --fix_data true [--max_drop 0.05]   stage 1 repairs training/validation dirs (never test sets)
  -- --key value ...              any hparam of the YAML (or a run option, see docs/RECIPES.md)"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "${here}/path.sh"
. "${here}/utils/log.sh"
. "${here}/utils/parse_options.sh"
. "${here}/utils/launch.sh"
. "${here}/utils/exp_name.sh"
[ "${1:-}" = "--" ] && shift
overrides=("$@")

if ${show_folds}; then
    for fold in ${folds}; do echo "${fold}"; done
    exit 0
fi
[ "${stage}" -le 5 ] && [ "${stop_stage}" -ge 0 ] && [ "${stage}" -le "${stop_stage}" ] \
    || die "--stage ${stage} --stop_stage ${stop_stage}: stages are 0-5 and stage <= stop_stage"
elp_check_launch
[ -f "${config}" ] || die "--config ${config}: no such file (run ./run.sh from the recipe directory)"
python "${ELP_ROOT}/recipes/check_options.py" --backbone "${backbone}" --method "${method}" ${backbone_arch:+--backbone_arch "${backbone_arch}"} \
    || die "fix the option above (./run.sh --help lists them)"
if [ -n "${data_root}" ]; then
    # a relative --data_root is relative to where the user typed the command
    case ${data_root} in /*) ;; *) data_root=${ELP_CALLER_PWD:-${PWD}}/${data_root} ;; esac
    [ -d "${data_root}" ] || die "--data_root ${data_root}: no such directory"
fi
data=data
# multi-node: node rank 0 writes data/[fold<k>/].stage2_done (its key: this run and what the data
# depend on) once stages 0-2 are done; the other nodes wait for it before stage 3 (utils/launch.sh)
prepared_key=$(elp_run_key "run_id=${run_id}" "data_root=${data_root}" "prep_opts=${prep_opts}" \
    "mini_corpus_opts=${mini_corpus_opts}" "config=$(sha256sum < "${config}")")
multinode=false
[ "${nnodes}" -gt 1 ] && multinode=true
if ${multinode} && [ "${node_rank}" -eq 0 ] && [ "${stage}" -le 2 ]; then
    rm -f "${data}/${ELP_PREPARED_MARKER}" "${data}"/fold*/"${ELP_PREPARED_MARKER}"   # the data change now
fi

if elp_stage 0; then
    if [ -z "${data_root}" ]; then
        log "Stage 0: no --data_root given: building the synthetic mini corpus (${mini_corpus})"
        # shellcheck disable=SC2086
        python "${ELP_ROOT}/${mini_corpus}" --out corpus ${mini_corpus_opts}
        corpus_root=corpus/${mini_corpus_subdir}
    else
        corpus_root=${data_root}
    fi
    log "Stage 0: data preparation from ${corpus_root}"
    # shellcheck disable=SC2086
    # the errors of data_prep.py name this script's option for the corpus, not its own --corpus-root
    ELP_CORPUS_ROOT_OPTION=${data_root:+--data_root} python local/data_prep.py --corpus-root "${corpus_root}" \
        --out "${data}" ${prep_opts}
    if [ -z "${data_root}" ]; then touch "${data}/.mini"; else rm -f "${data}/.mini"; fi
fi

# nodes > 0 look at data/ (data/.mini below, then the data) only once node rank 0 prepared it
if ${multinode} && [ "${node_rank}" -gt 0 ] && [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 3 ]; then
    read -r -a first_fold <<< "${folds}"
    elp_wait_prepared "${data}/${first_fold[0]:+fold${first_fold[0]}/}${ELP_PREPARED_MARKER}" "${prepared_key}" "${prep_timeout}"
fi

# mini mode: the data came from the mini corpus (stage 0 left data/.mini)
mini=false
[ -f "${data}/.mini" ] && mini=true
if [ -z "${tag}" ]; then
    label=$(exp_label "${backbone}" "${backbone_arch}" "$( ${mini} && [ -z "${backbone_source}" ] && echo true || echo false)")
    tag=$(exp_name "${label}" "${method}" "${seed}")
fi
exp=exp/${tag}
hp=(--backbone "${backbone}" --method "${method}")
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
    # a path is relative to where the user typed the command (run.sh moved to the recipe dir);
    # anything else that does not exist there is a hub id (owner/name)
    caller=${ELP_CALLER_PWD:-${PWD}}
    case ${backbone_source} in
        /*) ;;
        ./*|../*) backbone_source=${caller}/${backbone_source} ;;
        *) [ -e "${caller}/${backbone_source}" ] && backbone_source=${caller}/${backbone_source} ;;
    esac
    case ${backbone_source} in
        /*) [ -e "${backbone_source}" ] || die "--backbone_source ${backbone_source}: no such directory" \
                "(a relative path is taken from where you ran the command)" ;;
    esac
    [ -e "${backbone_source}" ] && backbone_source=$(readlink -f "${backbone_source}")
    hp+=(--backbone_source "${backbone_source}")
fi

# the data sets a fold's hparams name (prefix "" = no folds)
fold_hparams() {
    local prefix=$1 fold_exp=$2 fold_tag=$3
    fold_hp=("${hp[@]}" --tag "${fold_tag}" --output_folder "${fold_exp}" --data_dir "${data}${prefix:+/${prefix%/}}")
    if [ -n "${prefix}" ]; then
        fold_hp+=(--results_file fold_results.json --results_md "")
    fi
}

eval_device=cpu           # stage 4 runs where training ran: --ngpu 0 never touches a GPU
[ "${ngpu}" -gt 0 ] && eval_device=cuda:0

prefixes=("")
if [ -n "${folds}" ]; then
    prefixes=()
    for fold in ${folds}; do prefixes+=("fold${fold}/"); done
fi

if elp_stage 1; then
    log "Stage 1: validating data dirs"
    fix_opts=()
    ${fix_data} && fix_opts+=(--fix --max-drop "${max_drop}")
    for prefix in "${prefixes[@]}"; do
        fold_hparams "${prefix}" "${exp}" "${tag}"
        python "${ELP_ROOT}/recipes/validate_data.py" "${fix_opts[@]}" --recipe "${config}" "${fold_hp[@]}" "${overrides[@]}"
    done
fi

# Stages 2-5 of one fold ("" = no folds). Arguments: fold-prefix, experiment dir, tag.
run_fold() {
    local prefix=$1 fold_exp=$2 fold_tag=$3
    fold_hparams "${prefix}" "${fold_exp}" "${fold_tag}"
    if elp_stage 2; then
        log "Stage 2: inventory (${fold_exp})"
        python "${ELP_ROOT}/recipes/inventory.py" "${config}" "${fold_hp[@]}" "${overrides[@]}"
    fi
    local marker=${data}/${prefix}${ELP_PREPARED_MARKER}
    if ${multinode} && [ "${node_rank}" -eq 0 ] && [ "${stage}" -le 3 ] && [ "${stop_stage}" -ge 2 ]; then
        elp_mark_prepared "${marker}" "${prepared_key}"   # stage 2 is done, or stage 3 starts from the data as it is
    fi
    if elp_stage 3; then
        local train_log=${fold_exp}/train.log
        if [ "${node_rank}" -gt 0 ]; then
            elp_wait_prepared "${marker}" "${prepared_key}" "${prep_timeout}"
            train_log=${fold_exp}/train_node${node_rank}.log
        fi
        mkdir -p "${fold_exp}"
        log "Stage 3: training ${fold_tag} -> ${fold_exp} (log: ${train_log})"
        elp_train_command "${ELP_ROOT}/recipes/train.py" "${config}" "${fold_hp[@]}" -- "${overrides[@]}"
        log "Stage 3: ${ELP_CMD[*]}"
        elp_run "${ELP_CMD[@]}" 2>&1 | tee -a "${train_log}"
    fi
    if elp_stage 4; then
        log "Stage 4: inference (${fold_exp}/decode)"
        python "${ELP_ROOT}/recipes/infer.py" "${config}" "${fold_hp[@]}" --device "${eval_device}" "${overrides[@]}"
    fi
    if elp_stage 5; then
        log "Stage 5: scoring"
        python "${ELP_ROOT}/recipes/score.py" "${config}" "${fold_hp[@]}" "${overrides[@]}"
    fi
}

set -o pipefail
if [ -z "${folds}" ]; then
    run_fold "" "${exp}" "${tag}"
else
    for fold in ${folds}; do
        run_fold "fold${fold}/" "${exp}/fold${fold}" "${tag}_fold${fold}"
    done
    if elp_stage 5; then
        log "Stage 5: mean over folds ${folds}"
        python "${ELP_ROOT}/recipes/aggregate_folds.py" --exp "${exp}" --folds ${folds} --results-md RESULTS.md
    fi
fi
log "Done: ${exp}"
