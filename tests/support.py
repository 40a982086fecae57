"""Helpers the test suites share: free ports, real child processes, a private redis-server."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
from pydantic_settings import BaseSettings

from shared.cli.guard import child_setup
from shared.cli.stack import free_port, redis_answers

__all__ = ["ChildProcess", "RedisServer", "env_names", "free_port", "python_module", "wait_for_http", "wait_until"]


def env_names(settings: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads: its prefixed field names and upper-case aliases."""
    prefix = settings.model_config.get("env_prefix", "")
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias])
        names |= {c for c in choices if isinstance(c, str) and c.isupper()}
        names.add(f"{prefix}{name}".upper())
    return names


def wait_until(predicate, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def wait_for_http(url: str, timeout: float = 60.0, process: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 2xx; fail early if ``process`` exits."""

    def ready() -> bool:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            return httpx.get(url, timeout=2.0).is_success
        except httpx.HTTPError:
            return False

    wait_until(ready, timeout, 0.2, f"{url} answering")


class ChildProcess:
    """A service started as a real process, its output kept in a log file for failure reports.

    ``group``: the child leads a process group of its own, which :meth:`stop` and :meth:`kill` end
    whole (for servers that start processes of their own, like vLLM's engine), and it gets SIGTERM
    from the kernel if the test process dies first (``shared.cli.guard``), so none outlives the run.
    """

    def __init__(
        self, args: Sequence[str], env: dict[str, str] | None = None, log_dir: Path | None = None, group: bool = False
    ):
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_dir or tempfile.mkdtemp()) / f"{Path(self.args[0]).name}-{time.monotonic_ns()}.log"
        self.group = group
        self.process: subprocess.Popen | None = None

    def start(self) -> ChildProcess:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        setup = child_setup(os.getpid(), 0) if self.group else None
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, preexec_fn=setup
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._end_group()
        self._log.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._end_group()

    def _end_group(self) -> None:
        """Whatever the leader left behind in its group (it may have died before stopping them)."""
        if self.group and self.process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class RedisServer:
    """A private redis-server on a free port, so tests never touch the machine's own instance."""

    def __init__(self, persistent: bool = False) -> None:
        self.persistent = persistent
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="omost-redis-")
        self.child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        appendonly = "yes" if self.persistent else "no"
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", appendonly]
        self.child = ChildProcess([*args, "--dir", self.dir], log_dir=Path(self.dir)).start()
        wait_until(self.ping, 10.0, 0.05, "redis-server answering")
        return self

    def ping(self) -> bool:
        return redis_answers(self.url)

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def restart(self, down_seconds: float = 0.0) -> None:
        """Stop and start again on the same port; data survives only when ``persistent`` (AOF on)."""
        self.stop()
        time.sleep(down_seconds)
        self.start()


class StepGate:
    """The test's side of ``render_service/worker/step_gate.py``: hold rendering jobs between two steps.

    A job held here is running (it reported step 1) and stays so until released, however fast the
    machine renders, so a test can cancel it, stop its worker or outlive a deadline meanwhile. Every
    worker of a :class:`Stack` watches its stack's gate (``OMOST_RENDER_TEST_STEP_GATE``).
    """

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def hold_all(self) -> None:
        """Every job waits after its first step (and any later one) until :meth:`release_all`."""
        (self.folder / "all").touch()

    def release_all(self) -> None:
        for path in self.folder.iterdir():
            if path.name == "all" or path.name.startswith("pass-"):
                path.unlink()

    def let_pass(self, job_id: str) -> None:
        """While every job is held, let this one run to its end."""
        (self.folder / f"pass-{job_id}").touch()

    def hold(self, job_id: str) -> None:
        """Hold this job (whatever ``hold_all``) until :meth:`release`."""
        (self.folder / job_id).touch()

    def release(self, job_id: str) -> None:
        (self.folder / job_id).unlink(missing_ok=True)

    @contextlib.contextmanager
    def holding_all(self) -> Iterator[StepGate]:
        """Hold every job inside the block; let them all go at its end, whatever happened."""
        self.hold_all()
        try:
            yield self
        finally:
            self.release_all()


def user_environment(folder: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment for the ``omost`` command: no OMOST_ settings of the test run's, a fresh
    cache folder under ``folder`` with the tiny model already built in it, the checkout importable."""
    cache = folder / "cache"
    (cache / "omost").mkdir(parents=True)
    (cache / "omost" / "tiny-sdxl").symlink_to(tiny_model)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMOST_")}
    path = os.pathsep.join([str(Path(__file__).parents[1]), clean.get("PYTHONPATH", "")])
    return {**clean, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": path}
