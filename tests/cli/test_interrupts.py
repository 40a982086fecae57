"""Ctrl-C means stop (issue 27, point 3): interrupting ``omost`` cancels the render job it queued
and the plan it is waiting for, says so in one line with the job id, and exits 128 + the signal.

Everything is a real process on loopback: redis-server, the render API (with no worker, so a job
stays queued until it is canceled: held deterministically, not by timing), the planner, and as its
LLM ``tests/planner/slow_llm.py``, which holds a plan open for a minute and reports, from the
server's side, a request its client abandoned (its docstring says why SmolLM2 cannot do that).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.slow_llm import SlowLLM, start_slow_llm
from tests.render_service.helpers import Api, unique_prefix
from tests.support import RedisServer, wait_until

ROOT = Path(__file__).parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "omost_outputs" / "01_dragon_battle.md"
HELD_SECONDS = 120.0
"""The slow LLM's time per plan: far longer than any test waits, so a plan is in progress until stopped."""


@pytest.fixture(scope="module")
def render_api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    api = Api(redis_server.url, unique_prefix("interrupts"), tmp_path_factory.mktemp("render-api")).start()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[SlowLLM]:
    running = start_slow_llm(HELD_SECONDS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def planner(slow_llm: SlowLLM, redis_server: RedisServer) -> Iterator[RunningPlanner]:
    running = start_planner(
        redis_server.url, OMOST_PLANNER_LLM_URL=f"{slow_llm.url}/v1", OMOST_PLANNER_LLM_KIND="none",
        OMOST_PLANNER_GRAMMAR_PROFILE="permissive", OMOST_PLANNER_ONE_SHOT="false",
    )
    yield running
    running.child.stop()


def omost(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """``omost ARGS`` as a user starts it (``main`` installs the SIGTERM/SIGHUP handlers), stderr piped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMOST_")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE, text=True
    )


def line_starting(stream: IO[str], prefix: str) -> tuple[str, list[str]]:
    """Read ``stream`` until a line starts with ``prefix``; that line and every line read."""
    seen = []
    for line in stream:
        seen.append(line)
        if line.startswith(prefix):
            return line, seen
    raise AssertionError(f"no line starting {prefix!r} in:\n{''.join(seen)}")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_interrupting_a_render_cancels_its_job_and_says_so(
    render_api: Api, tmp_path: Path, signum: signal.Signals
) -> None:
    command = omost(tmp_path, "render", str(FIXTURE), "--render-url", render_api.url, "--width", "64",
                    "--height", "64", "--steps", "1", "-o", str(tmp_path / "out.png"))
    try:
        assert command.stderr is not None
        queued, _ = line_starting(command.stderr, "queued render ")
        job_id = queued.split()[2]
        assert httpx.get(f"{render_api.url}/v1/renders/{job_id}").json()["status"] == "queued"  # no worker: held

        command.send_signal(signum)
        rest = command.stderr.read()
        assert command.wait(30) == 128 + signum
    finally:
        if command.poll() is None:
            command.kill()
    assert f"interrupted: canceled render {job_id} (now canceled)" in rest.splitlines(), rest
    assert "Traceback" not in rest and "Aborted" not in rest
    assert httpx.get(f"{render_api.url}/v1/renders/{job_id}").json()["status"] == "canceled"


def test_interrupting_a_plan_closes_it_on_the_llm_and_queues_nothing(
    planner: RunningPlanner, render_api: Api, slow_llm: SlowLLM, tmp_path: Path
) -> None:
    before = slow_llm.stats()
    command = omost(tmp_path, "generate", "a dragon battle", "--url", planner.url, "--render-url", render_api.url,
                    "--width", "64", "--height", "64", "--steps", "1", "-o", str(tmp_path / "out.png"))
    try:
        wait_until(lambda: slow_llm.stats()["in_flight"] == before["in_flight"] + 1, 60, 0.1, "the plan under way")
        command.send_signal(signal.SIGINT)
        assert command.stderr is not None
        rest = command.stderr.read()
        assert command.wait(30) == 130
    finally:
        if command.poll() is None:
            command.kill()
    assert "interrupted: the plan in progress was canceled (nothing was queued)" in rest.splitlines(), rest
    assert "queued render" not in rest
    wait_until(lambda: slow_llm.stats()["abandoned"] == before["abandoned"] + 1, 30, 0.1, "the LLM request closed")
