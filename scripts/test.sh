#!/usr/bin/env bash
# The test command: set up (idempotent), lint the project's own code, then every test.
# The browser tests need Debian's Chromium: installed here when run as root; otherwise they fail with the
# reason. OMOST_SKIP_BROWSER=1 skips them on purpose (pytest's summary lists them as skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "${OMOST_SKIP_BROWSER:-}" = 1 ]; then
    echo "note: OMOST_SKIP_BROWSER=1: the browser tests (tests/playground) are skipped" >&2
elif [ ! -x "${OMOST_CHROMIUM:-/usr/bin/chromium}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver nodejs
    else
        echo "error: no Chromium at ${OMOST_CHROMIUM:-/usr/bin/chromium}, so the browser tests will fail:" \
            "run as root or 'sudo apt-get install chromium chromium-driver' (or OMOST_SKIP_BROWSER=1 to skip them)" >&2
    fi
fi
# Debian's prometheus package: promtool checks deploy/observability, and a real Prometheus scrapes the stack.
if ! { command -v prometheus && command -v promtool; } >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus
    else
        echo "error: prometheus/promtool are not installed, so the observability tests will fail:" \
            "run as root or 'sudo apt-get install prometheus'" >&2
    fi
fi
# openapi-python-client pins an older typer than the project's, so the generated-client test gets it in a
# venv of its own (.tools/, ignored by git).
if [ ! -x .tools/oapc/bin/openapi-python-client ]; then
    "${PYTHON:-python3}" -m venv .tools/oapc
    .tools/oapc/bin/python -m pip install --quiet 'openapi-python-client>=0.21'
fi
export OMOST_OPENAPI_GENERATOR="$PWD/.tools/oapc/bin/openapi-python-client"
# vLLM's CPU build in a venv of its own (.tools/vllm) and SmolLM2 converted for it (in the user's cache
# folder): 2-5 minutes once, then a second. tests/planner/test_vllm_real.py runs the planner on it.
bash scripts/setup_vllm.sh >/dev/null
# torch.compile's inductor caches the kernels it builds (by default under /tmp, which a reboot or a fresh CI
# machine empties). Keep them in the user's cache folder, outside the tree, where a CI cache can keep them
# too: the compile tests then build their C++ kernels (~40 s cold, 1-2 min on a loaded machine) once per
# torch version and graph, not on every run. A changed graph or torch is a new key: it is compiled anew.
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/omost-tests/torchinductor}"
.venv/bin/ruff check planner_service render_service shared tests bench scripts
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
