#!/usr/bin/env bash
# Joint training of emotion recognition (IEMOCAP fold 1), intent classification (SLURP) and
# keyword spotting (Speech Commands) on one frozen backbone: one run, one forward per mixed
# batch, one model package per task (docs/MULTITASK.md).
#
#   ./run.sh                                   # the members' mini corpora, stages 0-5
#   ./run.sh --method l_only
#   ./run.sh --tag mini_elp_shared -- --shared "[e, ln, p]" --er_options "{activation: gelu}"   # one encoder
#   ./run.sh --data_roots "iemocap=/corpora slurp=/corpora/slurp speech_commands=/corpora/speech_commands_v0.02" \
#       --backbone wavlm_plus --ngpu 1
#
# Options and stages: see ../../../recipes/run_joint.sh (all of its flags work here).
set -euo pipefail
export ELP_CALLER_PWD=${ELP_CALLER_PWD:-${PWD}}
cd "$(dirname "${BASH_SOURCE[0]}")"

exec ../../../recipes/run_joint.sh --members "iemocap/er slurp/ic speech_commands/kws" "$@"
