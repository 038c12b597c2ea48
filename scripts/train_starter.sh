#!/usr/bin/env bash
# Rebuild the shipped starter model from nothing but Debian packages and wheels:
# corpus -> enlightengan prepare -> enlightengan train (Ray Train) -> ship -> quality report.
# Usage: bash scripts/train_starter.sh [WORK_DIR]   (default ./starter-work; ~75 min on 2 cores)
# STEPS, and any extra `--set` overrides in EXTRA_SETTINGS, change the recipe.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-starter-work}"
steps="${STEPS:-7600}"
bin=.venv/bin
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}" RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0

"$bin/python" -m pipelines.starter.corpus --out "$work/corpus"
"$bin/enlightengan" prepare --low "$work/corpus/low" --normal "$work/corpus/normal" \
    --out "$work/shards"
# 77 normal-light images at batch 4: 20 steps per epoch. Half the epochs at the constant
# rate, then linear decay to zero, as the paper's 100 + 100 epochs.
epochs=$(( (steps + 19) / 20 ))
"$bin/enlightengan" train --data "$work/shards" --run "$work/run" --cpu --workers 1 \
    --torch-threads "$(nproc)" --precision "${PRECISION:-bf16}" --steps "$steps" \
    --checkpoint-every 500 --sample-every 1000 \
    $(bash scripts/starter_recipe.sh "$epochs") ${EXTRA_SETTINGS:-}
"$bin/python" -m pipelines.starter.ship --run "$work/run"
"$bin/python" benchmarks/bench_quality.py --corpus "$work/corpus" --out "$work/quality"
