#!/usr/bin/env bash
# Regenerate the screenshots in docs/img/ (the tests themselves write theirs to a temporary folder):
# the page tests take playground-phone.png and playground-turns.png, the real-stack test (a few minutes
# on CPU) playground.png and playground-streaming.png, the model picker's (a mixed fleet, about a minute)
# playground-flux.png. Extra arguments go to pytest, e.g. -k phone.
set -euo pipefail
cd "$(dirname "$0")/.."
OMOST_DOCS_IMG="$PWD/docs/img" .venv/bin/python -m pytest tests/playground/test_page.py tests/playground/test_e2e.py tests/playground/test_models.py -q "$@"
git status --short docs/img 2>/dev/null || true
