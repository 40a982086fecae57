"""A hook for tests: hold a rendering job between two steps until the test lets it go.

Tests that act on a job while it renders (cancel it, SIGTERM or SIGKILL its worker, keep it past a
claim deadline or a time limit) must not depend on how fast the machine renders ("enough steps that
it is surely still running" fails on a quiet machine). They hold the job here instead. With
``OMOST_RENDER_TEST_STEP_GATE`` naming a folder, a job that has reported at least one step waits,
before its next step, while

* ``<folder>/all`` exists and ``<folder>/pass-<job id>`` does not, or
* ``<folder>/<job id>`` exists,

unless it is to stop (canceled, superseded, over its time limit, the worker's shutdown grace spent):
the wait then ends and the render stops as it would have at that step. Heartbeats go on meanwhile
(they run on their own thread). Unset, as in production, the gate is never consulted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

POLL_SECONDS = 0.02


class StepGate:
    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def holds(self, job_id: str) -> bool:
        folder = self.folder
        if folder is None:
            return False
        if (folder / job_id).exists():
            return True
        return (folder / "all").exists() and not (folder / f"pass-{job_id}").exists()

    def wait(self, job_id: str, until: Callable[[], bool]) -> None:
        """Return once the gate lets ``job_id`` through or ``until()`` is true."""
        while self.holds(job_id) and not until():
            time.sleep(POLL_SECONDS)
