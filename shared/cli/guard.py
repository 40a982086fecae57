"""Children that die with their parent, however the parent dies (even SIGKILL).

Two layers, because either alone leaves a gap:

- On Linux, ``PR_SET_PDEATHSIG`` makes the kernel send the child SIGTERM when its parent ends.
  :func:`child_setup` is the ``preexec_fn`` that sets it between fork and exec, so it also
  covers children that are not Python (redis-server).
- Elsewhere (no prctl), Python children are started through ``python -m shared.cli.guard MODULE``,
  which watches its parent id and sends itself SIGTERM once the parent is gone, then runs MODULE
  as ``python -m MODULE`` would.

SIGTERM rather than SIGKILL: every service shuts down cleanly on it (a worker requeues its job).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import runpy
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1
PARENT_ENV = "OMOST_GUARD_PARENT_PID"
GRACE_SECONDS = 8.0
"""How long a child whose parent vanished may take to stop on SIGTERM before it is ended hard."""


def _prctl() -> Callable[..., Any] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    return libc.prctl


def child_setup(parent_pid: int, process_group: int) -> Callable[[], None]:
    """A ``preexec_fn``: join ``process_group`` (0: lead a new one) and, on Linux, ask the kernel
    for SIGTERM when ``parent_pid`` ends. (``Popen(process_group=)`` would need Python 3.11.)

    libc is looked up here, in the parent: the forked child must do as little as possible.
    """
    prctl = _prctl()

    def preexec() -> None:
        os.setpgid(0, process_group)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
            if os.getppid() != parent_pid:  # the parent died before prctl took effect
                os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def watch_parent(parent_pid: int, interval: float = 0.5, grace: float = GRACE_SECONDS) -> threading.Thread:
    """A daemon thread that SIGTERMs this process once ``parent_pid`` is no longer its parent."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)  # the graceful stop hung; nobody is left to wait for us

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit("usage: python -m shared.cli.guard MODULE [ARG ...]")
    parent = os.environ.get(PARENT_ENV)
    if parent:
        watch_parent(int(parent))
    module, sys.argv = argv[0], argv
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
