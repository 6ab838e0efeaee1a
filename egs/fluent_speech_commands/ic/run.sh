#!/usr/bin/env bash
# Fluent Speech Commands intent classification with ELP adapters (accuracy over the 31 intents).
#
#   ./run.sh                                   # synthetic mini corpus, stages 0-5
#   ./run.sh --data_root /corpora/fluent_speech_commands_dataset --backbone wavlm_plus --method elp
#   ./run.sh --stage 3 --stop_stage 5 --method el -- --number_of_epochs 30
#
# Options: see ../../../recipes/run_task.sh (all of its flags work here).
# The mini corpus holds eight of the real intents, three or four wordings each of our own, said
# by 16 espeak-ng voices in the real layout, speaker-disjoint splits as in the real corpus
# (tools/mini_corpus/fluent_speech_commands.py).
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_task.sh \
    --mini_corpus tools/mini_corpus/fluent_speech_commands.py --mini_corpus_subdir fluent_speech_commands_dataset \
    "$@"
