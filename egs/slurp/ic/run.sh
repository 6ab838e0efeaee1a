#!/usr/bin/env bash
# SLURP intent classification with ELP adapters (accuracy).
#
#   ./run.sh                                   # synthetic mini corpus, stages 0-5
#   ./run.sh --data_root /corpora/... --backbone wavlm_plus --method elp
#   ./run.sh --stage 3 --stop_stage 5 --method el -- --number_of_epochs 30
#
# Options: see ../../../recipes/run_task.sh (all of its flags work here).
# The mini corpus holds six intents (weather, music, news, email, calendar, time) in the real
# SLURP layout, with short sentences of our own wording (tools/mini_corpus/slurp.py), so a small
# model can learn them in minutes.
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_task.sh \
    --mini_corpus tools/mini_corpus/slurp.py --mini_corpus_subdir slurp \
    --mini_corpus_opts "--intents weather_query,play_music,news_query,email_query,calendar_set,datetime_query --sentences_per_intent 48 --max_words 6" \
    "$@"
