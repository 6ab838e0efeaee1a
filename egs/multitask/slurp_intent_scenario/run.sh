#!/usr/bin/env bash
# Joint training of two tasks labelled on the same audio: SLURP intent (utt2label) and scenario
# (utt2scenario) classification. Both tasks' items of a recording share one batch and one CNN
# pass, and one transformer pass where neither trains anything inside it (l_only,
# weighted_sum) or they share what they train there (docs/MULTITASK.md).
#
#   ./run.sh                                   # the SLURP mini corpus, stages 0-5
#   ./run.sh --method l_only
#   ./run.sh --data_roots "slurp=/corpora/slurp" --backbone wavlm_plus --ngpu 1
#
# In the mini corpus every scenario holds one intent (weather_query, play_music, ...), so the two
# tasks have the same classes there; SLURP's own devel and test annotations hold 18 scenarios and
# 81 intents. Options and stages: see ../../../recipes/run_joint.sh.
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_joint.sh --members "slurp/ic" "$@"
