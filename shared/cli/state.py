"""Where a running ``omost serve`` is: a small JSON file in the cache folder, so that other commands
use that stack instead of starting their own.

The file is removed when ``serve`` stops; one left behind by a killed ``serve`` is recognised as
stale (its process is gone or its planner does not answer ``/healthz``) and ignored.

One ``serve`` per cache folder: it holds an exclusive lock on ``serve.lock`` for its whole life
(the kernel releases it however the process ends, SIGKILL included), so a second one is refused
with the first one's pid and addresses instead of silently taking over the state file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the state file alone says a serve runs
    fcntl = None  # type: ignore[assignment]

import httpx

STATE_FILE = "serve.json"
LOCK_FILE = "serve.lock"


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


class ServeRunning(RuntimeError):
    """Another ``omost serve`` holds this cache folder; the message names it."""

    def __init__(self, pid: int | None, state: ServeState | None) -> None:
        who = f"pid {pid}" if pid else "its pid unknown"
        if state is not None and state.pid == pid:
            where = f"planner {state.planner_url}, render API {state.render_url}, model {state.model or '?'}"
        else:
            where = "still starting"
        super().__init__(
            f"`omost serve` is already running ({who}: {where}); other commands use it as it is. "
            "Stop it first (Ctrl-C in its terminal) to start another, or give this one another cache "
            "folder (XDG_CACHE_HOME)"
        )
        self.pid = pid


@contextlib.contextmanager
def serve_lock(cache: Path) -> Iterator[None]:
    """Held while a ``serve`` runs; :class:`ServeRunning` at once if another holds it."""
    if fcntl is None:
        if served := running_stack(cache):
            raise ServeRunning(served.pid, served)
        yield
        return
    with open(cache / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            text = lock.read().strip()
            pid = int(text) if text.isdigit() else None
            raise ServeRunning(pid, running_stack(cache)) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        yield
