"""The fallback for systems without ``prctl``: a child started through ``python -m shared.cli.guard``
stops once its parent is gone, with no help from the kernel (no PDEATHSIG is set here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import wait_until

ROOT = Path(__file__).parents[2]

# A parent that starts a guarded, long-running Python child, says its pid, and waits to be killed.
PARENT = """
import os, subprocess, sys, time
env = {**os.environ, "OMOST_GUARD_PARENT_PID": str(os.getpid())}
child = subprocess.Popen([sys.executable, "-m", "shared.cli.guard", "http.server", "0", "--bind", "127.0.0.1"],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
time.sleep(600)
"""


def running(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_guarded_child_stops_when_its_parent_is_killed() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        wait_until(lambda: running(child), 10, what="the guarded child running")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        wait_until(lambda: not running(child), 10, what="the guarded child gone after its parent")
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)
