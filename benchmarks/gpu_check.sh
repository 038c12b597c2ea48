#!/usr/bin/env bash
# The GPU check on a lent device machine: its python3 (which holds torch), this repository's
# working tree, results under $OUT (gpu_check.json and gpu_check.log).
# VGG weights: if .carry/vgg16.pth exists (copied from ~/.cache/enlightengan and carried), the
# training section uses it; otherwise random VGG weights, which cost the same time.
set -uo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-.}"
if [ -f .carry/vgg16.pth ]; then
    export ENLIGHTENGAN_VGG16="$PWD/.carry/vgg16.pth"
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
    2>&1 | tee "$out_dir/gpu_check.log"
# The script keeps to about 7.5 minutes; the hard stop keeps a hung section from eating the
# device time. gpu_check.json is rewritten after every section, so a stop loses only one.
timeout 500 python3 benchmarks/gpu_check.py --out "$out_dir/gpu_check.json" "$@" 2>&1 \
    | tee -a "$out_dir/gpu_check.log"
