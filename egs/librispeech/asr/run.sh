#!/usr/bin/env bash
# LibriSpeech ASR with ELP adapters (CTC, greedy decoding, WER).
#
#   ./run.sh                                   # synthetic mini corpus, stages 0-5
#   ./run.sh --data_root /corpora/... --backbone wavlm_plus --method elp
#   ./run.sh --stage 3 --stop_stage 5 --method el -- --number_of_epochs 30
#
#   ./run.sh --prep_opts --librilight-10h --tag mini_elp_10h -- --overrides_file conf/librilight_10h.yaml
#                                              # Libri-Light 10 h, WER on dev-clean (docs/RECIPES.md)
#
# Options: see ../../../recipes/run_task.sh (all of its flags work here).
# The mini corpus also holds a mini Libri-Light 10 h set (librispeech_finetuning/) and dev-other.
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_task.sh \
    --mini_corpus tools/mini_corpus/librispeech.py --mini_corpus_subdir '' --mini_corpus_opts --librilight \
    "$@"
