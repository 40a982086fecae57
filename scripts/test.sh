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
.venv/bin/ruff check planner_service render_service shared tests bench scripts
.venv/bin/lint-imports
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
