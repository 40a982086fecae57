"""``omost serve --llm vllm`` as a user runs it, everything real: vLLM (PyPI's CPU build, SmolLM2 as an HF
folder; ``scripts/setup_vllm.sh``) started as a child of the stack, its start-up shown, the planner on
it with the shaping of the model it serves, and every process, vLLM's engine and worker included,
gone when ``serve`` is killed."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.cli.test_processes import Serve, descendants, gone, port_free
from tests.planner.vllm_server import SETUP_HINT, converted_model_dir, vllm_cache_env
from tests.support import wait_until

pytestmark = pytest.mark.slow

START_TIMEOUT = 900.0
"""vLLM's first start compiles the model (up to ~4 minutes on two loaded cores), beside the tiny SDXL."""


def test_serve_runs_vllm_as_a_child_that_goes_with_it(env: dict[str, str], tmp_path: Path) -> None:
    model = converted_model_dir()
    assert (model / "config.json").is_file(), f"no converted SmolLM2 at {model}: {SETUP_HINT}"
    serve = Serve({**env, **vllm_cache_env()}, tmp_path, "--tiny", "--llm", "vllm", "--llm-model", str(model))
    try:
        wait_until(lambda: serve.state.exists() or serve.process.poll() is not None, START_TIMEOUT, 0.5, "serve ready")
        output = serve.output()
        assert serve.process.poll() is None, output[-3000:]
        # Not a terminal: progress comes as plain lines naming vLLM's start-up stage.
        assert re.search(r"starting: vLLM: [a-z ,]+, \d+ s", output), output[-3000:]
        vllm_url = re.search(r"vLLM +(http://127\.0\.0\.1:\d+/v1) +\(model smollm2-135m-instruct-hf\)", output)
        assert vllm_url, output[-3000:]
        logs = Path(re.search(r"logs in (\S+);", output)[1])  # type: ignore[index]
        ready = [json.loads(line)["msg"] for line in (logs / "planner.log").read_text().splitlines()
                 if "planner ready" in line]  # fmt: skip
        assert ready and f"LLM {vllm_url[1]}" in ready[0] and "is a known small model" in ready[0], ready
        assert "grammar strict-content, subject constraints True, one-shot True" in ready[0]
        planned = httpx.post(f"http://127.0.0.1:{serve.ports[0]}/v1/plans",
                             json={"prompt": "a red apple", "max_new_tokens": 120, "seed": 1}, timeout=300)  # fmt: skip
        assert planned.status_code == 200, planned.text
        children = descendants(serve.process.pid)
        commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]
        assert any(b"vllm.entrypoints" in command for command in commands)
        vllm_port = int(vllm_url[1].split(":")[2].split("/")[0])
    finally:
        if serve.process.poll() is None:
            serve.process.send_signal(signal.SIGKILL)  # no clean-up of its own: the children must see to it
        serve.process.wait(60)
    wait_until(lambda: all(gone(pid) for pid in children), 60, 0.2, "every child of serve gone, vLLM's too")
    for port in (*serve.ports, vllm_port):
        assert port_free(port), port
