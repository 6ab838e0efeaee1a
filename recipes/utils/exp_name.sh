#!/usr/bin/env bash
# The experiment name (tag) of a run when --tag is not given. Source it: . utils/exp_name.sh
#
#   exp_name LABEL METHOD [SEED]   ->  LABEL_METHOD[_sSEED]
#
# LABEL says which backbone the run trains on: "mini" for mini mode's stand-in backbone,
# otherwise the backbone's short name, with "_<arch>" for random weights of a preset size
# (exp_label). A seed appears only when one was asked for (--seed / run_all.sh --seeds): the
# recipe's own seed gives the plain name. Folds are directories inside it (exp/<tag>/fold<k>).
#
#   exp_name mini elp            -> mini_elp
#   exp_name mini elp 1987       -> mini_elp_s1987
#   exp_label wavlm_plus tiny    -> wavlm_plus_tiny

exp_label() {
    local backbone=$1 arch=${2:-} mini=${3:-false}
    if ${mini} && [ -z "${arch}" ]; then echo mini; else echo "${backbone}${arch:+_${arch}}"; fi
}

exp_name() {
    local label=$1 method=$2 seed=${3:-}
    echo "${label}_${method}${seed:+_s${seed}}"
}
