#!/usr/bin/env bash
# Rebuild the shipped starter model from Debian packages and wheels only:
# corpus -> enlightengan prepare -> enlightengan train (Ray Train) -> ship -> quality report.
#   bash scripts/setup.sh && bash scripts/train_starter.sh [WORK_DIR]   (default ./starter-work)
# STEPS (default 1200: about 20 minutes on 2 cores with native bf16) and PRECISION (bf16; fp32
# on CPUs without native bf16, about twice as slow) change the run; the recipe is below and
# BENCHMARKS.md says how it was chosen. The ship step writes enlightengan/weights/starter.pt
# and, beside it, starter-discriminators.pt (the run's global and patch discriminators).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-starter-work}"
steps="${STEPS:-1200}"
bin=.venv/bin
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

"$bin/python" -m pipelines.starter.corpus --output "$work/corpus"
"$bin/enlightengan" prepare --low "$work/corpus/low" --normal "$work/corpus/normal" \
    --output "$work/shards"
# 77 normal-light images at batch 4 make 20 steps an epoch. Half the epochs at the constant
# rate, then linear decay to zero, as the paper's 100 + 100 epochs.
epochs=$(( (steps + 19) / 20 ))
recipe=(
    generator.base_channels=16 discriminator.base_channels=32 augment.crop_size=128
    optim.batch_size=4 optim.lr=0.0003
    "optim.epochs_constant=$(( (epochs + 1) / 2 ))" "optim.epochs_decay=$(( epochs / 2 ))"
    loss.exposure=10 loss.exposure_target=0.6 loss.exposure_patch_size=32 loss.exposure_input_power=3
    loss.chroma=6
)
settings=()
for item in "${recipe[@]}"; do settings+=(--set "$item"); done
"$bin/enlightengan" train --data "$work/shards" --output "$work/run" --workers 1 \
    --threads-per-worker "$(nproc)" --precision "${PRECISION:-bf16}" --steps "$steps" \
    --checkpoint-every 500 --sample-every 250 "${settings[@]}"
"$bin/python" -m pipelines.starter.ship --run "$work/run"
# The new files' sha256 (printed above) go into enlightengan/shipped_weights.py (STARTER_SHA256,
# STARTER_DISCRIMINATORS_SHA256) before the package loads them as `starter`; until then the
# quality report scores the run's fp32 checkpoint.
"$bin/python" benchmarks/bench_quality.py --corpus "$work/corpus" --output "$work/quality" \
    --no-starter --checkpoint "trained=$work/run"
