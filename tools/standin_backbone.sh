#!/usr/bin/env bash
# Build the stand-in backbone of mini mode once, shared by every recipe: a small model of the
# named backbone's architecture pre-trained on a synthetic corpus of its own (no machine here
# reaches a model hub, and a random transformer is a useless frozen backbone; see
# docs/RECIPES.md "Mini mode"). Idempotent and safe to call from parallel recipes (a lock).
#
# The pre-training corpus is --corpora synthetic LibriSpeech-layout corpora (seeds 1..N, 320
# utterances each, the 8 voices of tools/mini_corpus/espeak.py), each reading 200 in-domain
# sentences and 120 sentences of the ASR vocabulary drawn with its own seed
# (tools/pretrain_text.py; none is a sentence of the mini IC or ASR corpora).
#
#   tools/standin_backbone.sh --backbone wavlm_plus --out exp/backbone_wavlm_plus_small [--steps 1600]
set -euo pipefail

backbone=wavlm_plus
out=
steps=${ELP_STANDIN_STEPS:-1600}      # the environment variables make a quick, weak stand-in
corpora=${ELP_STANDIN_CORPORA:-6}     # for tests; its recorded options keep a real run from reusing it
threads=2                 # fixed, whoever builds it: the weights depend on the thread count
                          # (float reductions), so run_all.sh and a lone ./run.sh must agree
help_message="Usage: $0 --backbone NAME --out DIR [--steps N] [--corpora N] [--threads N]"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "${root}/recipes/path.sh"
. "${root}/recipes/utils/log.sh"
. "${root}/recipes/utils/parse_options.sh"
[ -n "${out}" ] || die "--out is required"

mkdir -p "$(dirname "${out}")"
exec 9>"${out}.lock"
flock 9
# what the weights depend on; a stand-in built otherwise (or by an older version of this
# script, without the file) is never reused silently
build_options="backbone=${backbone} steps=${steps} corpora=${corpora} threads=${threads} text=v2"
if [ -f "${out}/config.json" ]; then
    built_with=$(cat "${out}/standin_options.txt" 2>/dev/null || echo "unrecorded: an older elp")
    [ "${built_with}" = "${build_options}" ] && exit 0
    die "${out} was built with other options (${built_with});" \
        "this build asks for '${build_options}': delete ${out} (experiments that used it keep their results) and rerun"
fi
work=${out}.work
rm -rf "${work}"
mkdir -p "${work}"
log "Pre-training the stand-in backbone (${backbone} architecture, small, ${steps} steps, ${corpora} corpora) -> ${out}" \
    "(about 3 min on an idle 2-core CPU; progress: ${work}/pretrain.log)"
corpus_dirs=()
for seed in $(seq 1 "${corpora}"); do
    python "${root}/tools/pretrain_text.py" --out "${work}/text${seed}.txt" --vocab_sentences 120 --vocab_seed "${seed}"
    python "${root}/tools/mini_corpus/librispeech.py" --out "${work}/corpus${seed}" --seed "${seed}" \
        --sentences "${work}/text${seed}.txt"
    corpus_dirs+=("${work}/corpus${seed}")
done
OMP_NUM_THREADS=${threads} python "${root}/tools/pretrain_backbone.py" --corpus "${corpus_dirs[@]}" \
    --out "${work}/model" --backbone "${backbone}" --arch small --steps "${steps}" > "${work}/pretrain.log" 2>&1 \
    || die "pre-training failed: see ${work}/pretrain.log"
echo "${build_options}" > "${work}/model/standin_options.txt"
mv "${work}/model" "${out}"
rm -rf "${work}"
log "stand-in backbone ready: ${out}"
