"""``omost`` as a user runs it, as processes: what it starts goes away with it however it is
stopped, it touches no Redis it was not given, a running ``serve`` is found, and a model that
cannot be loaded is one line. Everything real: redis-server, SmolLM2, the tiny SDXL."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from shared.cli.state import STATE_FILE
from tests.support import RedisServer, free_port, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "omost_outputs" / "01_dragon_battle.md"
START_TIMEOUT = 400  # SmolLM2, torch and the tiny model loading side by side on two shared cores


def omost(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for a reaper that may never come, in a container, counts as exited)."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def port_free(port: int) -> bool:
    """Free as a server sees it: bindable with SO_REUSEADDR (closed connections linger in TIME_WAIT)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Serve:
    """``omost serve --tiny`` started as a child of the test, its output in a log file."""

    def __init__(self, env: dict[str, str], folder: Path, *args: str) -> None:
        self.ports = (free_port(), free_port())
        self.state = Path(env["XDG_CACHE_HOME"]) / "omost" / STATE_FILE
        self.log = folder / "serve.log"
        argv = omost("serve", "--planner-port", str(self.ports[0]), "--render-port", str(self.ports[1]),
                     "--workers", "1", *args)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            return self.state.exists()

        wait_until(ready, START_TIMEOUT, 0.5, "serve's state file")

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture()
def serve(env: dict[str, str], tmp_path: Path) -> Iterator[Serve]:
    running = Serve(env, tmp_path, "--tiny")
    yield running
    if running.process.poll() is None:
        running.process.kill()
        running.process.wait()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=lambda s: s.name)
def test_every_child_goes_with_serve_however_it_dies(serve: Serve, signum: signal.Signals) -> None:
    serve.wait_ready()
    children = descendants(serve.process.pid)
    assert len(children) >= 4, children  # redis-server, render API, worker, planner
    redis_port = int(serve.output().split("redis      redis://127.0.0.1:")[1].split("/")[0])

    serve.process.send_signal(signum)
    serve.process.wait(60)
    wait_until(lambda: all(gone(pid) for pid in children), 10, 0.1, f"every child gone after {signum.name}")
    for port in (*serve.ports, redis_port):
        assert port_free(port), port
    if signum != signal.SIGKILL:
        assert serve.process.returncode == 0, serve.output()[-2000:]
        assert not serve.state.exists()


def test_commands_use_the_running_serve_and_forget_it_once_stopped(
    serve: Serve, env: dict[str, str], tmp_path: Path
) -> None:
    serve.wait_ready()
    out = tmp_path / "out.png"
    argv = omost("render", str(FIXTURE), "-o", str(out), "--steps", "1", "--width", "64", "--height", "64")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"using the stack of `omost serve` (pid {serve.process.pid})" in result.stderr
    assert "starting a temporary local stack" not in result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")

    serve.process.kill()  # leaves its state file behind: the next command must see that it is stale
    serve.process.wait()
    assert serve.state.exists()
    result = subprocess.run(omost("render", str(FIXTURE)), env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2  # looked for a stack, found none alive, and needs a model to start one
    assert "no running stack" in result.stderr


def test_the_stack_leaves_any_other_redis_untouched(env: dict[str, str], tmp_path: Path) -> None:
    """6379 is off limits on a shared machine, so the Redis that must stay untouched runs elsewhere and
    is what a careless stack would find through the usual variable, ``REDIS_URL``."""
    other = RedisServer().start()
    try:
        client = redis.Redis.from_url(other.url)
        client.set("someone:else", b"\x00precious")
        client.hset("job:theirs", mapping={"status": "queued"})
        client.xadd("omost:renders", {"message": "not yours"})
        before = {key: client.dump(key) for key in client.keys("*")}

        out = tmp_path / "gen.png"
        argv = omost("generate", "a red apple on a table", "--tiny", "-o", str(out), "--steps", "1",
                     "--width", "64", "--height", "64", "--max-new-tokens", "400")
        result = subprocess.run(argv, env={**env, "REDIS_URL": other.url}, capture_output=True, text=True,
                                timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]
        assert out.read_bytes().startswith(b"\x89PNG")
        queued = [line for line in result.stderr.splitlines() if line.startswith("queued render ")]
        assert len(queued) == 1 and "Ctrl-C cancels it" in queued[0]  # the job id, before the wait
        assert "stopping the temporary stack: render-api, render-worker-0, planner, redis" in result.stderr

        assert client.dbsize() == len(before)
        assert {key: client.dump(key) for key in client.keys("*")} == before
    finally:
        other.stop()
    scratch = Path(env["XDG_CACHE_HOME"]) / "omost" / "redis"
    assert not list(scratch.glob("tmp-*")), "the temporary stack's Redis data was not removed"


def test_a_model_that_cannot_be_loaded_is_one_line(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-sdxl"
    argv = omost("serve", "--model", str(missing), "--planner-port", str(free_port()),
                 "--render-port", str(free_port()), "--workers", "1")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert str(missing) in errors[0] and "not found" in errors[0]
    assert "Traceback" not in result.stderr
