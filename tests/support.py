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
from typing import Any

import httpx
import redis
from pydantic_settings import BaseSettings

from shared.cli.guard import child_setup
from shared.cli.stack import free_port, redis_answers

__all__ = [
    "ChildProcess",
    "RedisServer",
    "SentinelCluster",
    "env_names",
    "free_port",
    "python_module",
    "wait_for_http",
    "wait_until",
]


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

    def __init__(self, persistent: bool = False, extra_args: Sequence[str] = ()) -> None:
        self.persistent = persistent
        self.extra_args = list(extra_args)
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
        self.child = ChildProcess([*args, "--dir", self.dir, *self.extra_args], log_dir=Path(self.dir)).start()
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


PRIORITY_AFTER_SYNC = Path(__file__).resolve().parents[1] / "deploy/k8s/overlays/sentinel-redis/priority-after-sync.sh"


class SentinelCluster:
    """A primary, a replica and three Sentinels (``redis-server --sentinel``) on free ports: a real
    failover in a few seconds (``down_after_ms``), for tests and the chaos soak.

    The nodes keep no data on disk: a node killed and started again (:meth:`restart_node`, once the
    failover is done) comes back empty, as a replica of the new primary, and cannot be promoted until
    it is in sync (``replica-priority 0`` meanwhile): a Sentinel that fails over while it is still
    empty -- a primary slow to answer on a loaded machine looks down -- has no candidate then, instead
    of promoting the empty node and resyncing the real primary from it (all data gone).
    """

    SERVICE = "omost"

    def __init__(self, down_after_ms: int = 1000, failover_timeout_ms: int = 4000) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer()
        self.nodes = [self.primary, self.replica]
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinels: list[ChildProcess] = []
        self.dir = Path(tempfile.mkdtemp(prefix="omost-sentinel-"))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.SERVICE}/0"

    def start(self) -> SentinelCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # a start that failed half-way leaves no process behind
            raise

    def _start(self) -> SentinelCluster:
        self.primary.start()
        self.replica.extra_args = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.dir / f"sentinel-{port}.conf"  # Sentinel rewrites its file: one each, writable
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {self.SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.SERVICE} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.SERVICE} 1\n"
            )
            child = ChildProcess([self.primary.binary, str(conf), "--sentinel"], log_dir=self.dir).start()
            self.sentinels.append(child)
        wait_until(self.replica_online, 30.0, 0.1, "the replica in sync")
        wait_until(lambda: self._sentinels_agree(self.primary.port, replicas=1), 30.0, 0.1, "sentinels ready")
        return self

    def _ask(self, port: int, *command: str) -> object:
        with redis.Redis(port=port, socket_timeout=1, socket_connect_timeout=1, decode_responses=True) as client:
            return client.execute_command(*command)

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels answer it (the first that answers)."""
        for port in self.sentinel_ports:
            try:
                answer = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
            except Exception:
                continue
            if answer:
                return int(answer[1])  # type: ignore[index]
        return None

    def _sentinels_agree(self, primary_port: int, replicas: int, down_replica: int | None = None) -> bool:
        """Every Sentinel names ``primary_port`` with the same config epoch, sees it up with no failover
        in progress, knows the two others, and sees ``replicas`` replicas up (and ``down_replica``, when
        given, as a replica that is down: the failover has reached every Sentinel's configuration)."""
        epochs = set()
        try:
            for port in self.sentinel_ports:
                host_port = self._ask(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.SERVICE)
                if not host_port or int(host_port[1]) != primary_port:  # type: ignore[index]
                    return False
                primary: Any = self._ask(port, "SENTINEL", "MASTER", self.SERVICE)
                if primary["flags"] != "master" or int(primary["num-other-sentinels"]) < len(self.sentinel_ports) - 1:
                    return False  # s_down, o_down, failover_in_progress, ...: not settled yet
                epochs.add(primary["config-epoch"])
                known: Any = self._ask(port, "SENTINEL", "REPLICAS", self.SERVICE)
                if sum("s_down" not in r["flags"] and r["master-link-status"] == "ok" for r in known) < replicas:
                    return False
                if down_replica is not None and not any(
                    int(r["port"]) == down_replica and "s_down" in r["flags"] for r in known
                ):
                    return False
        except (redis.RedisError, KeyError, TypeError, ValueError):
            return False
        return len(epochs) == 1

    def node(self, port: int) -> RedisServer:
        return next(node for node in self.nodes if node.port == port)

    def replica_online(self) -> bool:
        """Whether the current primary has a replica in sync."""
        port = self.primary_port() or self.primary.port
        try:
            info = self._ask(port, "INFO", "replication")
        except Exception:
            return False
        replicas = [value for name, value in dict(info).items() if name.startswith("slave")]  # type: ignore[call-overload]
        return any(isinstance(r, dict) and r.get("state") == "online" for r in replicas)

    def kill_primary(self) -> int:
        """SIGKILL the current primary; its port."""
        port = self.primary_port()
        assert port is not None, "no primary known to the Sentinels"
        node = self.node(port)
        assert node.child is not None
        node.child.kill()
        return port

    def wait_failover(self, old_port: int, timeout: float = 60.0) -> int:
        """Wait until the failover away from ``old_port`` is over in every Sentinel; the new primary's port.

        Over means: every Sentinel names the same new primary at the same config epoch, none has a
        failover in progress, and each holds the old primary as a down replica of the new one (so a
        node started on that port later is told to follow the new primary, never promoted back)."""
        wait_until(lambda: (self.primary_port() or old_port) != old_port, timeout, 0.1, "a failover")
        new = self.primary_port()
        assert new is not None

        def over() -> bool:
            return self._sentinels_agree(new, replicas=0, down_replica=old_port)

        wait_until(over, timeout, 0.1, "every sentinel done with the failover")
        return new

    def restart_node(self, port: int, timeout: float = 60.0) -> None:
        """Start a killed node again, empty, as a replica of the current primary (as a deployment's
        init step does: an empty node never starts as a primary); wait until it is in sync and every
        Sentinel counts it. Call it after :meth:`wait_failover`.

        Until its first sync is done the node has ``replica-priority 0``, which Sentinel never
        promotes; then it gets the default priority back and is a candidate like any replica."""
        primary = self.primary_port()
        assert primary is not None and primary != port
        node = self.node(port)
        for stale in Path(node.dir).glob("*.rdb"):  # a replica's last full sync: an old dataset, not ours
            stale.unlink()
        node.extra_args = ["--replicaof", "127.0.0.1", str(primary), "--replica-priority", "0"]
        node.start()
        # The Kubernetes overlay's own script gives the priority back once the first sync is loaded.
        subprocess.run(["sh", str(PRIORITY_AFTER_SYNC), str(port)], check=True, timeout=timeout)
        wait_until(lambda: self._sentinels_agree(primary, replicas=1), timeout, 0.2, "every sentinel counting it")

    def stop(self) -> None:
        for child in self.sentinels:
            child.stop()
        for node in self.nodes:
            node.stop()


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


REGION_LOCATIONS = (
    "on the left", "on the right", "in the center", "on the top", "on the bottom", "on the top-left",
    "on the top-right", "on the bottom-left", "on the bottom-right", "in the center", "on the left",
)  # fmt: skip


def regions_canvas(conditions: int) -> dict[str, object]:
    """A canvas of ``conditions`` conditions: the global description and ``conditions - 1`` small regions."""
    region = {"offset": "no offset", "area": "a small square area", "detailed_descriptions": [], "tags": "",
              "distance_to_viewer": 1.0, "HTML_web_color_name": "gray"}  # fmt: skip
    return {
        "global_description": {"description": "A quiet room.", "HTML_web_color_name": "beige"},
        "local_descriptions": [
            {**region, "location": REGION_LOCATIONS[i], "description": f"A thing number {i}."}
            for i in range(conditions - 1)
        ],
    }


def user_environment(folder: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment for the ``omost`` command: no OMOST_ settings of the test run's, a fresh
    cache folder under ``folder`` with the tiny model already built in it, the checkout importable."""
    cache = folder / "cache"
    (cache / "omost").mkdir(parents=True)
    (cache / "omost" / "tiny-sdxl").symlink_to(tiny_model)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMOST_")}
    path = os.pathsep.join([str(Path(__file__).parents[1]), clean.get("PYTHONPATH", "")])
    return {**clean, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": path}
