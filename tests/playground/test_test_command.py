"""The README's test command (scripts/test.sh): lints exactly the project's tracked Python files, and the
browser tests' screenshots stay out of the tracked tree."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.playground.browser import DOCS_IMG_ENV

ROOT = Path(__file__).resolve().parents[2]


def _ruff_args() -> list[str]:
    lines = [line for line in (ROOT / "scripts" / "test.sh").read_text().splitlines() if "ruff check" in line]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])[2:]  # after ".venv/bin/ruff check"


def test_the_lint_step_checks_every_tracked_python_file_and_no_stray_one() -> None:
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git checkout to know which files are tracked")
    args = _ruff_args()
    assert args and "." not in args
    listed = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "ruff"), "check", "--show-files", *args],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    linted = {str(Path(p).resolve().relative_to(ROOT)) for p in listed}
    tracked = set(subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split())
    assert tracked <= linted
    untracked = set(
        subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "*.py"], cwd=ROOT, capture_output=True, text=True
        ).stdout.split()
    )
    # Only files inside the project's folders are linted: a stray file at the top is not.
    assert all("/" in path for path in linted - tracked - untracked)


def test_screenshots_go_to_a_temporary_folder(screenshots: Path) -> None:
    if os.environ.get(DOCS_IMG_ENV):
        assert screenshots == Path(os.environ[DOCS_IMG_ENV])
    else:
        assert ROOT not in screenshots.resolve().parents
