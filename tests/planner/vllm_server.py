"""A real vLLM server for the tests: PyPI's CPU build serving SmolLM2-135M-Instruct, the very weights
the embedded llama.cpp serves, converted to an HF folder. ``scripts/setup_vllm.sh`` (run by
``scripts/test.sh``) makes both; without them the tests fail and say so, they never skip."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from shared.cli.vllm import EAGER, VllmMissing, VllmServer, vllm_python
from tests.support import ChildProcess, free_port, wait_for_http, wait_until

MODEL_ENV = "OMOST_VLLM_TEST_MODEL"
SERVED_NAME = "SmolLM2-135M-Instruct"
STARTUP_SECONDS = 600.0
"""vLLM's imports alone take 30-60 s on two loaded cores."""
SETUP_HINT = "run `bash scripts/setup_vllm.sh` (scripts/test.sh does)"


def _tests_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "omost-tests"


def converted_model_dir() -> Path:
    """The converted SmolLM2 folder scripts/setup_vllm.sh writes (outside the tree, in the user's cache)."""
    configured = os.environ.get(MODEL_ENV)
    return Path(configured) if configured else _tests_cache() / "smollm2-135m-instruct-hf"


def vllm_cache_env() -> dict[str, str]:
    """vLLM keeps the model graph it compiles (minutes on a first start, on two cores) under
    VLLM_CACHE_ROOT: in the tests' cache folder, beside the inductor's (scripts/test.sh), where CI can
    keep it, and the same for every test, whatever XDG_CACHE_HOME a test gives its children."""
    return {"VLLM_CACHE_ROOT": os.environ.get("VLLM_CACHE_ROOT", str(_tests_cache() / "vllm"))}


@dataclass
class RunningVllm:
    """A vLLM server as the tests see it: its address, served name and log, and its process where the
    test started it (``omost serve --llm vllm`` owns the one it starts)."""

    base_url: str
    model: str
    log_path: Path
    child: ChildProcess | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        """The first line of vLLM's log matching ``pattern``, once it is written."""
        found: list[re.Match[str]] = []

        def logged() -> bool:
            found[:] = [m for m in [re.search(pattern, self.log())] if m]
            return bool(found)

        wait_until(logged, timeout, 0.2, f"vLLM logging {pattern!r}")
        return found[0]

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop(timeout=30)


LOG_REQUESTS = "--enable-log-requests"
"""The tests read what vLLM received, and its aborts, in its log."""


def start_vllm(max_model_len: int, *extra_args: str, port: int | None = None, name: str = SERVED_NAME) -> RunningVllm:
    """vLLM as its own process group (its engine and worker are processes of their own), ended with
    the test process if that dies first."""
    try:
        python = vllm_python()
    except VllmMissing as exc:
        raise RuntimeError(f"{exc}; {SETUP_HINT}") from None
    model = converted_model_dir()
    if not (model / "config.json").is_file():
        raise RuntimeError(f"no converted SmolLM2 at {model}: {SETUP_HINT}")
    server = VllmServer(
        str(model), port or free_port(), max_model_len=max_model_len, name=name,
        # Eager (shared.cli.vllm.EAGER): the start is ~5 s of engine instead of ~2.5 minutes of compiling.
        extra_args=(LOG_REQUESTS, EAGER, *extra_args),
    )  # fmt: skip
    child = ChildProcess(server.args(python), env=server.environment() | vllm_cache_env(), group=True).start()
    try:
        wait_for_http(server.health_url, timeout=STARTUP_SECONDS, process=child.process)
    except Exception as exc:
        child.stop()
        raise RuntimeError(f"vLLM did not start ({exc}):\n{child.log()[-6000:]}") from None
    return RunningVllm(server.base_url, server.served_model_name, child.log_path, child)
