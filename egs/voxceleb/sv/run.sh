#!/usr/bin/env bash
# VoxCeleb1 speaker verification with ELP adapters (AAM-softmax, cosine, EER/minDCF).
#
#   ./run.sh                                   # synthetic mini corpus, stages 0-5
#   ./run.sh --data_root /corpora/... --backbone wavlm_plus --method elp
#   ./run.sh --stage 3 --stop_stage 5 --method el -- --number_of_epochs 30
#
# Options: see ../../../recipes/run_task.sh (all of its flags work here).
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_task.sh \
    --mini_corpus tools/mini_corpus/voxceleb.py --mini_corpus_subdir voxceleb1 \
    "$@"
