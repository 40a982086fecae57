"""Where a running ``omost serve`` is: a small JSON file in the cache folder, so that other commands
use that stack instead of starting their own.

The file is removed when ``serve`` stops; one left behind by a killed ``serve`` is recognised as
stale (its process is gone or its planner does not answer ``/healthz``) and ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

STATE_FILE = "serve.json"


@dataclass(frozen=True)
class ServeState:
    pid: int
    planner_url: str
    render_url: str
    redis_url: str
    model: str | None = None

    @property
    def tiny(self) -> bool:
        return self.model == "tiny"


def state_path(cache: Path) -> Path:
    return cache / STATE_FILE


def write_state(cache: Path, state: ServeState) -> None:
    path = state_path(cache)
    staging = path.with_suffix(f".{state.pid}.tmp")
    staging.write_text(json.dumps(asdict(state)))
    staging.replace(path)  # readers never see half a file


def remove_state(cache: Path, pid: int) -> None:
    """Remove the file if it is ``pid``'s (another ``serve`` may have taken over since)."""
    path = state_path(cache)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_stack(cache: Path, timeout: float = 2.0) -> ServeState | None:
    """The recorded ``serve`` if its process lives and its planner answers; else None."""
    try:
        state = ServeState(**json.loads(state_path(cache).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(state.pid):
        return None
    try:
        if httpx.get(f"{state.planner_url}/healthz", timeout=timeout).is_success:
            return state
    except httpx.HTTPError:
        pass
    return None
