"""Every code block of README.md and docs/*.md that talks to a stack runs as written against the real
tiny stack (issue 27, point 6), and every other block says here why it is not run, so a new
snippet cannot slip in untested.

What the test fills in, and nothing else: the addresses (the README's 127.0.0.1:8000 / :8100 become
the test stack's free ports), ``YOUR_TOKEN`` (the stack's token; curl commands without an
``Authorization`` header get it from a ``.curlrc``, as a user who configured curl would), the
placeholders ``<id>`` / ``<id from the first answer>`` (the id the previous command answered) and
``{...}`` (a canvas), and 1024-pixel sides, which become 256 as the README tells a ``--tiny`` user.
Snippets run in a temporary folder (what they write stays there) that links the checkout's ``.venv``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared import parse_canvas_code
from shared.cli.stack import LocalStack
from tests.integrations.conftest import TOKEN

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
CANVAS = parse_canvas_code((ROOT / "tests" / "fixtures" / "omost_outputs" / "01_dragon_battle.md").read_text()).canvas

# (document, the block's first line) -> why it is not run here.
NOT_RUN = {
    ("README.md", "client ──HTTP──> planner_service"): "a diagram",
    ("README.md", "# 1. Set up everything"): "setup and `generate --tiny` from scratch: tests/cli/test_processes.py, "
                                             "scripts/test.sh",
    ("README.md", ".venv/bin/omost serve --tiny"): "the CLI's commands as processes: tests/cli/test_processes.py",
    ("architecture.md", "shared/  (the contract"): "a diagram",
    ("cli.md", "planning: 212 tokens"): "output shown, not a command",
    ("integrations.md", '{"error": {"message"'): "an answer shown, not a request",
    ("integrations.md", "from openai import OpenAI"): "the README's OpenAI snippet makes the same call (b64_json is "
                                                     "the default) and runs here: one plan less",
    ("integrations.md", "pip install 'omost-service[mcp]'"): "installs, then serves stdio forever; the MCP snippet "
                                                              "of the README and tests/integrations/test_mcp.py run it",
    ("integrations.md", '{"mcpServers"'): "a host's configuration file",
    ("integrations.md", "OMOST_MCP_HTTP_TOKEN=a-long-random-secret"): "serves until stopped, on every interface: "
                                                                       "tests/integrations/test_mcp_http.py starts it "
                                                                       "so, with its token and allowed hosts",
    ("integrations.md", "python -m venv ~/.cache/omost/oapc"): "tests/integrations/test_openapi_clients.py runs it",
    ("observability.md", "promtool check config"): "tests/deploy/test_observability.py runs these checks",
    ("observability.md", "prometheus --config.file"): "serves until stopped: tests/e2e/test_stack.py runs a "
                                                       "Prometheus on these files",
    ("observability.md", "# /etc/grafana/provisioning"): "a Grafana provisioning file",
    ("observability.md", "OTEL_EXPORTER_OTLP_ENDPOINT=http"): "serves until stopped: tests/e2e/test_stack.py runs "
                                                               "`omost serve` traced, with a receiver",
    ("observability.md", "POST /v1/generations"): "a trace shown (tests/e2e/test_stack.py checks this tree)",
    ("observability.md", "render path, "): "output of bench/tracing_bench.py",
    ("observability.md", "services:"): "a compose override: needs Docker and a collector image",
    ("planner.md", "client ──HTTP──> planner_service"): "a diagram",
    ("planner.md", "vllm serve lllyasviel/omost-llama-3-8b"): "needs a GPU host and the 8B model",
    ("planner.md", "planner ready: LLM"): "a log line shown",
    ("planner.md", '{"prompt": "a cat and a dog on a sofa", "history"'): "a request body shown; the README's curl "
                                                                       "snippets send the same",
    ("queue-protocol.md", "{"): "a record shown",
    ("queue-protocol.md", '{"type": "status"'): "an event shown",
    ("queue-protocol.md", "MULTI"): "Redis commands a worker issues, shown",
    ("security.md", '{"tokens": {'): "a token file's content: tests/render_service/test_named_tokens.py reads it "
                                      "with the services' own reader",
    ("render-engine.md", "from render_service.engine import"): "the engine's API outline (tests/render_engine)",
    ("render-engine.md", "pytest tests/render_engine"): "the test command itself",
    ("render-engine.md", "python bench/render_bench.py"): "benchmarks (bench/)",
    ("render-service.md", "redis-server &"): "starts the services by hand: what `omost serve` and this test's "
                                             "stack fixture do",
    ("render-service.md", '{"type": "about:blank"'): "an answer shown",
    ("render-service.md", ". .venv/bin/activate"): "the test command itself",
    ("render-service.md", '{"default": "default"'): "an answer shown (tests/render_service/test_models.py reads "
                                                    "GET /v1/models from a mixed fleet)",
}


@dataclass(frozen=True)
class Block:
    document: str
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return self.text.strip().splitlines()[0]

    def key(self) -> str:
        return f"{self.document}: {self.first_line[:60]}"


def blocks() -> list[Block]:
    return [Block(path.name, m[1], m[2]) for path in DOCUMENTS for m in FENCE.finditer(path.read_text())]


def not_run(block: Block) -> str | None:
    return next((why for (doc, start), why in NOT_RUN.items()
                 if doc == block.document and block.first_line.startswith(start)), None)


RUN = [b for b in blocks() if not_run(b) is None]


class Filler:
    """Addresses, token, sizes and the placeholders, filled from what the stack answered so far."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.last_id = ""

    def __call__(self, text: str) -> str:
        planner = self.stack.planner_url.removeprefix("http://")
        render = self.stack.render_url.removeprefix("http://")
        text = re.sub(r"(?:127\.0\.0\.1|localhost):8000", planner, text)
        text = re.sub(r"(?:127\.0\.0\.1|localhost):8100", render, text)
        text = text.replace("YOUR_TOKEN", TOKEN).replace("1024", "256")
        canvas = CANVAS.model_dump_json().replace("'", "'\\''")  # inside a single-quoted shell word
        text = text.replace("{...}", canvas)
        if "<id" in text:
            assert self.last_id, f"no id answered before: {text}"
            text = re.sub(r"<id[^>]*>", self.last_id, text)
        return text

    def remember(self, answer: str) -> None:
        try:
            data = json.loads(answer)
        except ValueError:
            return
        if isinstance(data, dict):
            self.last_id = str(data.get("conversation_id") or data.get("id") or self.last_id)


def commands(script: str) -> list[str]:
    """A bash block's commands: continuation lines joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", script)
    return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def environment(folder: Path) -> dict[str, str]:
    (folder / ".curlrc").write_text(f'header = "Authorization: Bearer {TOKEN}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMOST_")}
    return {**env, "PYTHONPATH": str(ROOT), "CURL_HOME": str(folder)}


def run(argv: list[str], folder: Path, env: dict[str, str]) -> str:
    result = subprocess.run(argv, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{shlex.join(argv)[:300]}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def problem(answer: str) -> str | None:
    """An error the services answered (a problem document), or None."""
    try:
        data = json.loads(answer)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("status"), int) and data["status"] >= 400:
        return answer[:500]
    return None


def test_every_block_is_run_or_says_why_not() -> None:
    documented = {(b.document, b.first_line) for b in blocks()}
    for doc, start in NOT_RUN:
        assert any(d == doc and line.startswith(start) for d, line in documented), f"stale entry: {doc}: {start}"
    live = re.compile(r"(?:127\.0\.0\.1|localhost|PLANNER):8[01]00")
    assert all(live.search(b.text) for b in RUN), [b.key() for b in RUN if not live.search(b.text)]


@pytest.mark.parametrize("block", RUN, ids=[b.key() for b in RUN])
def test_snippet_runs_as_written(block: Block, stack: LocalStack, tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = environment(tmp_path)
    fill = Filler(stack)
    if block.language == "python":
        script = tmp_path / "snippet.py"
        script.write_text(fill(block.text))
        run([sys.executable, str(script)], tmp_path, env)
    else:
        assert block.language in ("bash", "sh"), block.key()
        for command in commands(block.text):
            if "-H \"Authorization" in command or "-H 'Authorization" in command:
                env_here = {**env, "CURL_HOME": str(tmp_path / "no-curlrc")}
            else:
                env_here = env
            answer = run(["bash", "-euo", "pipefail", "-c", fill(command)], tmp_path, env_here)
            if "-X DELETE" in command and '"status":409' in answer.replace(" ", ""):
                continue  # the README's block waits for its job's end first: "409 the job already ended"
            assert problem(answer) is None, f"{command}\n{problem(answer)}"
            fill.remember(answer)
    for written in tmp_path.glob("*.png"):
        assert written.read_bytes().startswith(b"\x89PNG"), written
