#!/usr/bin/env bash
# Speech Commands v0.02 keyword spotting, 12 classes (10 words, _unknown_, _silence_), accuracy.
#
#   ./run.sh                                   # synthetic mini corpus, stages 0-5
#   ./run.sh --data_root /corpora/speech_commands_v0.02 --backbone wavlm_plus --method elp
#   ./run.sh --stage 3 --stop_stage 5 --method el -- --number_of_epochs 30
#
# Options: ./run.sh --help (all of recipes/run_task.sh's flags work here).
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}   # a relative --data_root is relative to it
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_task.sh \
    --mini_corpus tools/mini_corpus/speech_commands.py --mini_corpus_subdir speech_commands_v0.02 \
    "$@"
