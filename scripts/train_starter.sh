#!/usr/bin/env bash
# Rebuild the shipped starter model from Debian packages and wheels only, in two stages:
#   1. from scratch on the first corpus (exposure 1/64-1/4, wallpapers as published);
#   2. fine-tuned from stage 1 (`train --init-from`) on a second corpus whose low-light photos
#      reach only a little dark (exposure up to 1/2) and whose normal-light photos are less
#      vivid (saturation x0.85), with targets that keep brightness and saturation near the
#      input's. Each stage: corpus -> enlightengan prepare -> enlightengan train (Ray Train).
# Then ship (a checkpoint directory: generator + discriminators, float16) and the quality report.
#   bash scripts/setup.sh && bash scripts/train_starter.sh [WORK_DIR]   (default ./starter-work)
# STEPS (stage 1, default 1200) and FINETUNE_STEPS (stage 2, default 1200) take about 20 and 25
# minutes on 2 cores with native bf16; PRECISION=fp32 on CPUs without it (about twice as slow).
# BENCHMARKS.md says how both recipes were chosen.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-starter-work}"
steps="${STEPS:-1200}"
finetune_steps="${FINETUNE_STEPS:-1200}"
bin=.venv/bin
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

# 77 normal-light images at batch 4 make 20 steps an epoch. Half the epochs at the constant
# rate, then linear decay to zero, as the paper's 100 + 100 epochs.
schedule() {
    local epochs=$(( ($1 + 19) / 20 ))
    echo "optim.epochs_constant=$(( (epochs + 1) / 2 ))" "optim.epochs_decay=$(( epochs / 2 ))"
}
as_flags() { for item in "$@"; do printf -- '--set\n%s\n' "$item"; done; }
train() {  # train DATA RUN STEPS SETTING... [-- extra flags]
    local data=$1 run=$2 count=$3
    shift 3
    mapfile -t flags < <(as_flags "$@")
    "$bin/enlightengan" train --data "$data" --output "$run" --workers 1 \
        --threads-per-worker "$(nproc)" --precision "${PRECISION:-bf16}" --steps "$count" \
        --checkpoint-every 400 --sample-every 400 "${flags[@]}" ${INIT_FROM:+--init-from "$INIT_FROM"}
}

"$bin/python" -m pipelines.starter.corpus --output "$work/corpus"
"$bin/enlightengan" prepare --low "$work/corpus/low" --normal "$work/corpus/normal" \
    --output "$work/shards"
# shellcheck disable=SC2046
INIT_FROM="" train "$work/shards" "$work/run" "$steps" \
    generator.base_channels=16 discriminator.base_channels=32 augment.crop_size=128 \
    optim.batch_size=4 optim.lr=0.0003 $(schedule "$steps") \
    loss.exposure=10 loss.exposure_target=0.6 loss.exposure_patch_size=32 \
    loss.exposure_input_power=3 loss.chroma=6

"$bin/python" -m pipelines.starter.corpus --output "$work/corpus-finetune" \
    --low-exposure 0.015625 0.5 --normal-saturation 0.85
"$bin/enlightengan" prepare --low "$work/corpus-finetune/low" \
    --normal "$work/corpus-finetune/normal" --output "$work/shards-finetune"
# The generator's settings come from stage 1; these change the optimiser and the losses.
# shellcheck disable=SC2046
INIT_FROM="$work/run" train "$work/shards-finetune" "$work/run-finetune" "$finetune_steps" \
    augment.crop_size=128 optim.batch_size=4 optim.lr=0.00005 $(schedule "$finetune_steps") \
    loss.exposure=5 loss.exposure_target=0.6 loss.exposure_patch_size=16 \
    loss.exposure_input_power=2.2 loss.exposure_never_darken=true loss.chroma=3 loss.saturation=3

# Tone transfer (enlightengan.tone): the network's lift at 0.82 from a mean luma of 40 up and 1.4
# at 20 and below, unless the photo is noisy (estimated noise 1-3); the base layer denoised at
# its own noise level; the generator's colour balance at half weight (0.8 for dark photos).
# Chosen with benchmarks/tone_search.py on the demo sets and DICM (BENCHMARKS.md, "Starter v3").
"$bin/python" -m pipelines.starter.ship --run "$work/run-finetune" --tone-strength 0.82 \
    --tone-dark-strength 1.4 --set generator.tone_transfer_dark_luma=20 \
    --set generator.tone_transfer_bright_luma=40 --set generator.tone_transfer_denoise=1 \
    --set generator.tone_transfer_noise_low=1 --set generator.tone_transfer_noise_high=3 \
    --set generator.tone_transfer_colour=0.5 --set generator.tone_transfer_dark_colour=0.8
# The new checkpoint.json's sha256 (printed above) goes into enlightengan/shipped_weights.py
# (STARTER_SHA256) before the package loads it as `starter`; until then the quality report
# scores the written checkpoint as it is (with its tone transfer).
"$bin/python" benchmarks/bench_quality.py --corpus "$work/corpus" --output "$work/quality" \
    --no-starter --weights "trained=enlightengan/weights/starter"
