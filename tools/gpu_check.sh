#!/usr/bin/env bash
# The prepared GPU check: everything the CPU machines cannot measure, in one run of a few
# minutes on one CUDA device (docs/BENCHMARKS.md "GPU", docs/SCALING.md "Measured on a GPU").
#
#   1  the peer benchmark (SpeechBrain's WavLM wrappers, HF PEFT LoRA, elp's methods and speed
#      variants), fp32 and bf16, batch 4 x 3 s (with memory) and 8 x 3 s
#   2  elp bench (every method against elp full), fp32 and bf16, batch 8 x 3 s
#   3  elp bench-multitask: N tasks on one shared backbone vs N separate models
#   4  every recipe, stages 1-5 on --ngpu 1 with its GPU defaults, one epoch, on synthetic audio
#      at the corpus's real utterance lengths (tools/synthetic_data.py) and a random WavLM
#      Base+ checkpoint: training throughput, peak memory, that every stage runs on CUDA
#   5  NCCL: one torchrun process, a DDP training step of an adapted model
#
# Writes <out>/gpu_check.tar.gz (tables, JSON, logs) and <out>/summary.txt; scratch in --work. Each part has a
# time limit; a failing part is logged and the next one runs.
#
#   tools/gpu_check.sh --out /tmp/gpu_check [--parts "5 4 1 3 2"] [--work DIR] [--steps 200] [--method elp]
#   tools/gpu_check.sh --out /tmp/x --device cpu --arch tiny --steps 3 --eval_utts 8   # rehearsal on CPU
set -uo pipefail

out=exp/gpu_check     # summary.txt and gpu_check.tar.gz
work=                 # scratch: logs, tables, the random checkpoint (default <out>/work)
parts="5 4 1 3 2"      # in this order (cheap and never-run paths first)
steps=200             # training steps per recipe (part 4): utterances = steps x batch_size
method=elp
eval_utts=128         # utterances of each validation / test set (part 4)
device=cuda           # cpu: rehearse the script without a GPU (parts 1-4)
arch=full             # full: WavLM Base+ architecture; tiny: the test architecture (rehearsal)
help_message="Usage: $0 --out DIR [--parts '5 4 1 3 2'] [--work DIR] [--steps N] [--method NAME] [--eval_utts N] [--device cuda|cpu] [--arch full|tiny]"

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "${root}/recipes/path.sh"
. "${root}/recipes/utils/log.sh"
. "${root}/recipes/utils/parse_options.sh"
export OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
mkdir -p "${out}"
out=$(readlink -f "${out}")
work=${work:-${out}/work}
mkdir -p "${work}"
work=$(readlink -f "${work}")
summary=${out}/summary.txt
: > "${summary}"

note() { echo "$*" | tee -a "${summary}" >&2; }
want() { [[ " ${parts} " == *" $1 "* ]]; }
# run_part NAME LIMIT_S CMD...: run with a time limit, log to work/NAME.log, note the outcome
run_part() {
    local name=$1 limit=$2 start rc
    shift 2
    start=$(date +%s)
    timeout "${limit}" bash -c '"$@"' run_part "$@" > "${work}/${name}.log" 2>&1
    rc=$?
    note "${name}: exit ${rc} after $(( $(date +%s) - start )) s (limit ${limit} s; log work/${name}.log)"
    [ ${rc} -eq 0 ] || tail -n 25 "${work}/${name}.log" >&2
    return ${rc}
}

note "gpu_check $(date -u '+%Y-%m-%dT%H:%M:%SZ') commit $(git -C "${root}" rev-parse --short HEAD 2>/dev/null || echo unknown)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "${summary}" 2>&1
python -c "import torch, transformers, speechbrain; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'available', torch.cuda.is_available(), 'bf16', torch.cuda.is_available() and torch.cuda.is_bf16_supported(), \
'| transformers', transformers.__version__, '| speechbrain', speechbrain.__version__)" >> "${summary}" 2>&1
cat "${summary}" >&2

# one random WavLM Base+ checkpoint, the backbone of every part
checkpoint=${work}/wavlm_plus_random
python -c "from elp.bench.sources.peer_variants import save_random_checkpoint; from elp.core.presets import TINY_CONFIG
save_random_checkpoint('${checkpoint}', 'wavlm_plus', TINY_CONFIG if '${arch}' == 'tiny' else {})" \
    || { note "could not save the random checkpoint"; exit 1; }

elp_cli() { python -m elp.cli "$@"; }
tiny=(); [ "${arch}" = tiny ] && tiny=(--tiny)
ngpu=1; [ "${device}" = cpu ] && ngpu=0
export root checkpoint method ngpu
export -f elp_cli
speed_variants="el+sdpa+cnncache elp+sdpa+cnncache"
bf16_variants="el+sdpa+cnncache+bf16w elp+sdpa+cnncache+bf16w"
peer_methods="full weighted_sum l_only lora el elp weighted_sum+cache ${speed_variants}"

# part 4: <recipe dir> <task kind> <data subdir> <sets...> (NAME:UTTERANCES:MEAN_S:MIN_S:MAX_S; the
# training set's count is filled in from --steps; lengths are each corpus's published statistics,
# docs/SCALING.md) and the generator's extra options
recipe_table() {
    local n=$(( steps * 8 )) e=${eval_utts}
    echo "librispeech/asr asr - train_clean_100:${n}:12.7:1.3:24.5 dev_clean:${e}:7.2:1.5:32.6 test_clean:${e}:7.4:1.3:35 | --speakers 40"
    echo "voxceleb/sv sv - train:${n}:8.2:4:20 valid:${e}:8.2:4:20 test:$(( e / 2 )):8.2:4:145 | --speakers $(( n / 16 + 2 ))"
    echo "iemocap/er classify fold1 train:${n}:4.5:0.6:34 dev:${e}:4.5:0.6:34 test:${e}:4.5:0.6:34 | --labels 4 --speakers 8"
    echo "slurp/ic classify - train:${n}:2.9:0.5:16 devel:${e}:2.9:0.5:16 test:${e}:2.9:0.5:16 | --labels $(( n / 40 + 2 )) --speakers 60"
    echo "speech_commands/kws classify - train:${n}:1:1:1 valid:${e}:1:1:1 test:${e}:1:1:1 | --labels 12 --speakers 60"
}

part1() {  # the peer benchmark
    local precision extra
    for precision in fp32 bf16; do
        extra=; [ ${precision} = bf16 ] && extra=${bf16_variants}
        # shellcheck disable=SC2086
        run_part "peers_${precision}_b4" 150 elp_cli bench --peers "${tiny[@]}" --device "${device}" --source "${checkpoint}" \
            --precision ${precision} --batch-size 4 --duration 3 --warmup 3 --repeats 10 \
            --methods ${peer_methods} ${extra} --out-dir "${work}/bench"
        # shellcheck disable=SC2086
        run_part "peers_${precision}_b8" 120 elp_cli bench --peers --no-memory "${tiny[@]}" --device "${device}" --source "${checkpoint}" \
            --precision ${precision} --batch-size 8 --duration 3 --warmup 3 --repeats 10 \
            --methods ${peer_methods} ${extra} --out-dir "${work}/bench"
    done
}

part2() {  # elp bench
    local precision extra
    for precision in fp32 bf16; do
        extra=; [ ${precision} = bf16 ] && extra=${bf16_variants}
        # shellcheck disable=SC2086
        run_part "bench_${precision}_b8" 120 elp_cli bench "${tiny[@]}" --device "${device}" --in-process --retries 0 \
            --precision ${precision} --batch-size 8 --duration 3 --warmup 3 --repeats 10 \
            --methods full weighted_sum l_only conventional lora prefix e_only p_only el elp \
            weighted_sum+cache l_only+cache ${speed_variants} ${extra} --out-dir "${work}/bench"
    done
}

part3() {  # several tasks on one backbone
    run_part multitask 150 elp_cli bench-multitask "${tiny[@]}" --device "${device}" --batch-size 8 --duration 4 --repeats 5 \
        --mixes l_only l_only,weighted_sum l_only,weighted_sum,l_only,weighted_sum el el,elp,el,elp \
        --out "${work}/bench/multitask_${device}.md"
}

recipe_stages() {  # recipe:sub first last
    local recipe=${1%%:*} sub=${1#*:} folds=()
    [ "${sub}" != - ] && folds=(--folds "${sub#fold}")
    (cd "${root}/egs/${recipe}" && ./run.sh --stage "$2" --stop_stage "$3" --ngpu "${ngpu}" --backbone wavlm_plus \
        --backbone_source "${checkpoint}" --method "${method}" --tag "gpu_${method}" "${folds[@]}" \
        -- --number_of_epochs 1)
}

recipe_data() {  # recipe kind sub sets... -- generator options: synthetic data dirs, then stages 1-2
    local recipe=$1 kind=$2 sub=$3 data
    shift 3
    data=${root}/egs/${recipe}/data; [ "${sub}" != - ] && data=${data}/${sub}
    rm -rf "${root}/egs/${recipe}/data" "${root}/egs/${recipe}/exp/gpu_${method}"
    python "${root}/tools/synthetic_data.py" --out "${data}" --kind "${kind}" --jobs 3 "$@" \
        && recipe_stages "${recipe}:${sub}" 1 2
}
export -f recipe_stages recipe_data

part4() {  # every recipe on synthetic audio at real lengths
    local recipe kind sub rest sets opts spec set_args name entry recipes=()
    # data and stages 1-2 of all recipes at once (CPU work), then stage 3 alone on the device one
    # recipe after another (the throughput figures), then stages 4-5 of all at once
    while read -r recipe kind sub rest; do
        sets=${rest%%|*} opts=${rest#*|}
        set_args=()
        for spec in ${sets}; do set_args+=(--set "${spec}"); done
        name=${recipe//\//_}
        # shellcheck disable=SC2086
        run_part "prepare_${name}" 150 recipe_data "${recipe}" "${kind}" "${sub}" "${set_args[@]}" ${opts} &
        recipes+=("${recipe}:${sub}")
    done < <(recipe_table)
    wait
    for entry in "${recipes[@]}"; do
        name=${entry%%:*}; run_part "stage3_${name//\//_}" 100 recipe_stages "${entry}" 3 3
    done
    for entry in "${recipes[@]}"; do
        name=${entry%%:*}; run_part "stages45_${name//\//_}" 150 recipe_stages "${entry}" 4 5 &
    done
    wait
    python "${root}/tools/gpu_report.py" --root "${root}" --tag "gpu_${method}" >> "${summary}" 2>&1 \
        || note "gpu_report failed"
}

part5() {  # NCCL
    [ "${device}" = cuda ] || { note "nccl: skipped (no CUDA device)"; return 0; }
    run_part nccl 90 python -m torch.distributed.run --standalone --nproc_per_node=1 "${root}/tools/nccl_step.py"
}

# everything small enough to bring back, in one archive: tables, logs, and each recipe run's
# stats, results, decodes and package metadata (no audio, checkpoints or weights); rewritten
# after every part, so a run stopped from outside still leaves what it measured
pack() {
    local exp recipe dest
    for exp in "${root}"/egs/*/*/exp/gpu_"${method}"; do
        [ -d "${exp}" ] || continue
        recipe=${exp%/exp/*}
        dest=${work}/recipes/${recipe#"${root}"/egs/}
        mkdir -p "${dest}"
        (cd "${exp}" && find . -type f \( -name '*.json' -o -name '*.txt' -o -name '*.log' -o -name '*.md' -o -name '*.png' \) \
            -size -2M -print0 | xargs -0 -r cp --parents -t "${dest}")
    done
    tar czf "${out}/gpu_check.tar.gz.tmp" -C "${work}" --exclude=wavlm_plus_random . \
        && mv "${out}/gpu_check.tar.gz.tmp" "${out}/gpu_check.tar.gz"
}

for part in ${parts}; do
    want "${part}" || continue
    "part${part}"
    pack
done
note "done $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
