"""Keep it held (issue 13): a corpus of hostile and careless requests, the issue's cases and their
neighbours, sent to both services running as real processes. Each must get its expected 4xx as a
problem document that does not echo what was sent; none may get a 5xx or a dropped connection."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.planner.conftest import RunningPlanner, start_planner
from tests.planner.slow_llm import SlowLLM, start_slow_llm
from tests.render_service.helpers import CANVAS, Api, body, unique_prefix
from tests.support import RedisServer, free_port

TOKEN = "corpus-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MARK = "HOSTILE-MARKER"  # repeated in payloads, so an echo of the input is easy to spot
MAX_PROBLEM_BYTES = 16 * 1024


@dataclass
class Case:
    name: str
    method: str
    path: str
    expect: set[int]
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] | None = None
    authorized: bool = True


def _canvas(**region: Any) -> dict[str, Any]:
    canvas = copy.deepcopy(CANVAS)
    canvas["local_descriptions"][0].update(region)
    return canvas


def _raw(text: str) -> bytes:
    return text.encode()


def _with_canvas(member: str) -> bytes:
    return _raw('{"canvas": ' + json.dumps(CANVAS) + ", " + member + "}")


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


JSON = {"Content-Type": "application/json"}
BAD_WEBHOOKS = [
    "http://a..b/", "http://.x/", f"http://{'a' * 64}.example/", "http://\u0080/", "http://xn--/", "http://[::1/",
    "http://127.1/", "http://0x7f000001/", "http://2130706433/", "http://[::ffff:127.0.0.1]/",
    "http://[::1]:8100/", "http://169.254.169.254/latest/meta-data/", "http://localhost/", "http://0.0.0.0/",
    "https://user:pw@example.com/", "http://example.com:99999/", "file:///etc/passwd", "gopher://x/",
]  # fmt: skip


def render_cases() -> list[Case]:
    cases = [
        Case("NaN width", "POST", "/v1/renders", {422}, content=_with_canvas('"width": NaN')),
        Case("Infinity guidance", "POST", "/v1/renders", {422}, content=_with_canvas('"guidance_scale": Infinity')),
        Case("-Infinity strength", "POST", "/v1/renders", {422},
             content=_with_canvas('"initial_latent_strength": -Infinity')),
        Case("1e999 distance", "POST", "/v1/renders", {422},
             content=_raw(json.dumps(body()).replace('"distance_to_viewer": 3.0', '"distance_to_viewer": 1e999'))),
        Case("string width", "POST", "/v1/renders", {422}, body(width="64")),
        Case("float width", "POST", "/v1/renders", {422}, body(width=64.0)),
        Case("bool steps", "POST", "/v1/renders", {422}, body(steps=True)),
        Case("huge int seed", "POST", "/v1/renders", {422}, body(seed=2**70)),
        Case("negative images", "POST", "/v1/renders", {422}, body(num_images=-1)),
        Case("the issue's monster job", "POST", "/v1/renders", {422},
             body(width=2048, height=2048, steps=150, num_images=8, hires_fix={"scale": 2.0, "steps": 150})),
        Case("50k-deep array", "POST", "/v1/renders", {400, 422}, content=_deep(50_000)),
        Case("40k-deep object", "POST", "/v1/renders", {400, 422},  # 240 kB: just under the body limit
             content=b'{"a":' * 40_000 + b"1" + b"}" * 40_000),
        Case("empty body", "POST", "/v1/renders", {422}, content=b""),
        Case("truncated JSON", "POST", "/v1/renders", {400}, content=b'{"canvas": {'),
        Case("invalid UTF-8", "POST", "/v1/renders", {400, 422}, content=b'{"canvas": "\xff\xfe"}'),
        Case("UTF-8 BOM", "POST", "/v1/renders", {202, 400, 422},  # RFC 8259 lets a parser skip it
             content=b"\xef\xbb\xbf" + json.dumps(body()).encode()),
        Case("top-level array", "POST", "/v1/renders", {422}, [body()]),
        Case("top-level null", "POST", "/v1/renders", {422}, content=b"null"),
        Case("lone surrogate", "POST", "/v1/renders", {202, 422},
             content=_raw(json.dumps(body(negative_prompt="x")).replace('"x"', '"\\ud800"'))),
        Case("NUL in prompt", "POST", "/v1/renders", {202, 422}, body(canvas=_canvas(description="a\u0000fox"))),
        Case("10k description", "POST", "/v1/renders", {422}, body(canvas=_canvas(description=MARK * 1000))),
        Case("2k regions", "POST", "/v1/renders", {413, 422},
             body(canvas={**CANVAS, "local_descriptions": CANVAS["local_descriptions"] * 2000})),
        Case("unknown field", "POST", "/v1/renders", {422}, body(**{MARK * 1000: 1})),
        Case("over the body limit", "POST", "/v1/renders", {413}, body(negative_prompt=MARK * 30_000)),
        Case("text/plain JSON", "POST", "/v1/renders", {400, 415, 422}, content=json.dumps(body()).encode(),
             headers={"Content-Type": "text/plain"}),
        Case("form body", "POST", "/v1/renders", {400, 415, 422}, content=b"canvas=x",
             headers={"Content-Type": "application/x-www-form-urlencoded"}),
        Case("empty Idempotency-Key", "POST", "/v1/renders", {422}, body(), headers={"Idempotency-Key": ""}),
        Case("long Idempotency-Key", "POST", "/v1/renders", {422}, body(), headers={"Idempotency-Key": "k" * 256}),
        Case("no token", "POST", "/v1/renders", {401}, body(), authorized=False),
        Case("no token, malformed body", "POST", "/v1/renders", {401}, content=b"{", authorized=False),
        Case("huge token", "GET", "/v1/renders", {401}, headers={"Authorization": "Bearer " + "t" * 10_000},
             authorized=False),
        Case("basic auth", "GET", "/v1/renders", {401}, headers={"Authorization": "Basic dXNlcjpwdw=="},
             authorized=False),
        Case("path traversal id", "GET", "/v1/renders/..%2F..%2Fetc%2Fpasswd", {404, 422}),
        Case("NUL in id", "GET", "/v1/renders/a%00b", {404, 422}),
        Case("long id", "GET", "/v1/renders/" + "a" * 65, {422}),
        Case("unknown job events", "GET", "/v1/renders/" + "0" * 32 + "/events", {404},
             headers={"Last-Event-ID": "99999999999999999999999-x"}),
        Case("negative image index", "GET", "/v1/renders/" + "0" * 32 + "/images/-1", {422}),
        Case("huge image index", "GET", "/v1/renders/" + "0" * 32 + "/images/99999999999999999999", {422}),
        Case("limit not a number", "GET", "/v1/renders", {422}, params={"limit": "1e3"}),
        Case("limit negative", "GET", "/v1/renders", {422}, params={"limit": "-1"}),
        Case("cursor injection", "GET", "/v1/renders", {422}, params={"cursor": "1:* OR 1=1"}),
        Case("status unknown", "GET", "/v1/renders", {422}, params={"status": MARK}),
        Case("empty key filter", "GET", "/v1/renders", {422}, params={"idempotency_key": ""}),
        Case("PUT", "PUT", "/v1/renders/abc", {405}),
        Case("PATCH", "PATCH", "/v1/renders", {405}),
        Case("admin without token", "GET", "/v1/admin/workers", {401}),
    ]
    cases += [Case(f"webhook {url!r}", "POST", "/v1/renders", {422}, body(webhook_url=url)) for url in BAD_WEBHOOKS]
    return cases


def planner_cases() -> list[Case]:
    plan = {"prompt": "a dragon"}
    return [
        Case("NaN temperature", "POST", "/v1/plans", {422}, content=b'{"prompt": "a cat", "temperature": NaN}'),
        Case("Infinity top_p", "POST", "/v1/plans", {422}, content=b'{"prompt": "a cat", "top_p": Infinity}'),
        Case("NaN guidance in render", "POST", "/v1/generations", {422},
             content=b'{"prompt": "a cat", "render": {"guidance_scale": NaN}}'),
        Case("Infinity distance in canvas", "POST", "/v1/plans", {422},
             content=_raw(json.dumps({"prompt": "edit", "canvas": CANVAS}).replace("3.0", "Infinity"))),
        Case("string width in render", "POST", "/v1/generations", {422}, {**plan, "render": {"width": "64"}}),
        Case("monster render", "POST", "/v1/generations", {422},
             {**plan, "render": {"width": 2048, "height": 2048, "steps": 150, "num_images": 8}}),
        Case("unknown render field", "POST", "/v1/generations", {422}, {**plan, "render": {MARK * 1000: 1}}),
        Case("string stream", "POST", "/v1/plans", {422}, {**plan, "stream": "yes"}),
        Case("empty prompt", "POST", "/v1/plans", {422}, {"prompt": ""}),
        Case("blank prompt", "POST", "/v1/plans", {422}, {"prompt": "   "}),
        Case("huge prompt", "POST", "/v1/plans", {413, 422}, {"prompt": MARK * 10_000}),
        Case("seed below 0", "POST", "/v1/plans", {422}, {**plan, "seed": -1}),
        Case("seed 2**64", "POST", "/v1/plans", {422}, {**plan, "seed": 2**64}),
        Case("max_new_tokens 0", "POST", "/v1/plans", {422}, {**plan, "max_new_tokens": 0}),
        Case("max_new_tokens 1e9", "POST", "/v1/plans", {422}, {**plan, "max_new_tokens": 10**9}),
        Case("bad history role", "POST", "/v1/plans", {422}, {**plan, "history": [{"role": "system", "content": "x"}]}),
        Case("10k history turns", "POST", "/v1/plans", {400, 413, 422},
             {**plan, "history": [{"role": "user", "content": "hi"}] * 10_000}),
        Case("unknown conversation", "POST", "/v1/plans", {404}, {**plan, "conversation_id": "0" * 32}),
        Case("conversation traversal", "POST", "/v1/plans", {404, 422}, {**plan, "conversation_id": "../../x"}),
        Case("over the body limit", "POST", "/v1/plans", {413}, content=b'{"prompt": "' + b"x" * 2_000_000 + b'"}'),
        Case("50k-deep JSON", "POST", "/v1/plans", {400, 422}, content=_deep(50_000)),
        Case("truncated JSON", "POST", "/v1/plans", {400}, content=b'{"prompt": '),
        Case("invalid UTF-8", "POST", "/v1/plans", {400, 422}, content=b'{"prompt": "\xff"}'),
        Case("top-level string", "POST", "/v1/plans", {422}, content=b'"a cat"'),
        Case("no token", "POST", "/v1/plans", {401}, plan, authorized=False),
        Case("no token, malformed", "POST", "/v1/generations", {401}, content=b"{", authorized=False),
        Case("conversation id too long", "GET", "/v1/conversations/" + "a" * 65, {422}),
        Case("conversation unknown", "GET", "/v1/conversations/" + "0" * 32, {404}),
        Case("conversation NUL", "GET", "/v1/conversations/a%00b", {404, 422}),
        Case("DELETE plans", "DELETE", "/v1/plans", {405}),
        # The OpenAI-compatible Images API answers errors in OpenAI's shape (checked below).
        Case("control-character image prompt", "POST", "/v1/images/generations", {400}, {"prompt": "\x1d"}),
        Case("blank image prompt", "POST", "/v1/images/generations", {400}, {"prompt": " \n\t"}),
        Case("NaN image count", "POST", "/v1/images/generations", {400}, content=b'{"prompt": "a cat", "n": NaN}'),
    ]


def send(client: httpx.Client, case: Case) -> httpx.Response:
    headers = {**(AUTH if case.authorized else {}), **case.headers}
    if case.content is not None:
        headers = {**JSON, **headers}
        return client.request(case.method, case.path, content=case.content, headers=headers, params=case.params)
    if case.json_body is not None:
        return client.request(case.method, case.path, json=case.json_body, headers=headers, params=case.params)
    return client.request(case.method, case.path, headers=headers, params=case.params)


def check(client: httpx.Client, cases: list[Case]) -> list[str]:
    wrong = []
    for case in cases:
        try:
            answer = send(client, case)
        except httpx.HTTPError as exc:
            wrong.append(f"{case.name}: no answer ({type(exc).__name__}: {exc})")
            continue
        problem = f"{case.name}: {answer.status_code} {answer.text[:300]}"
        if answer.status_code not in case.expect:
            wrong.append(f"{problem} (expected {sorted(case.expect)})")
        elif answer.status_code >= 400 and case.path.startswith("/v1/images/"):
            if not isinstance(answer.json().get("error", {}).get("message"), str) or MARK * 5 in answer.text:
                wrong.append(f"{problem} (not an OpenAI error)")
        elif answer.status_code >= 400:
            if not answer.headers.get("content-type", "").startswith("application/problem+json"):
                wrong.append(f"{problem} (not a problem document)")
            elif not isinstance(answer.json().get("detail"), str):
                wrong.append(f"{problem} (no detail)")
            elif len(answer.content) > MAX_PROBLEM_BYTES or MARK * 5 in answer.text:
                wrong.append(f"{case.name}: the error echoes the input ({len(answer.content)} bytes)")
    return wrong


@pytest.fixture(scope="module")
def render_api(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    api = Api(redis_server.url, unique_prefix("corpus"), tmp_path_factory.mktemp("corpus-logs"),
              api_token=TOKEN, admin_token="corpus-admin").start()  # fmt: skip
    try:
        yield api.url
    finally:
        api.stop()
        assert "Traceback" not in api.child.log(), api.child.log()[-4000:]


@pytest.fixture(scope="module")
def planner(redis_server: RedisServer) -> Iterator[RunningPlanner]:
    llm: SlowLLM = start_slow_llm(0.0)
    running = start_planner(
        redis_server.url,
        OMOST_PLANNER_LLM_URL=f"{llm.url}/v1",
        OMOST_PLANNER_LLM_KIND="none",
        OMOST_PLANNER_ONE_SHOT="false",
        OMOST_PLANNER_API_TOKEN=TOKEN,
    )
    try:
        yield running
    finally:
        running.child.stop()
        llm.stop()
        assert "Traceback" not in running.child.log(), running.child.log()[-4000:]


def test_render_api_corpus(render_api: str) -> None:
    with httpx.Client(base_url=render_api, timeout=30) as client:
        wrong = check(client, render_cases())
    assert not wrong, "\n".join(wrong)


def test_planner_corpus(planner: RunningPlanner) -> None:
    with httpx.Client(base_url=planner.url, timeout=30) as client:
        wrong = check(client, planner_cases())
    assert not wrong, "\n".join(wrong)


def test_request_ids_are_not_echoed_raw(render_api: str, tmp_path: Path) -> None:
    for given in ("x" * 129, "line\nbreak", "\x00"):
        try:
            answer = httpx.get(f"{render_api}/healthz", headers={"X-Request-ID": given}, timeout=10)
        except (httpx.LocalProtocolError, ValueError):
            continue  # the client itself refuses to send it: nothing reached the server
        assert answer.status_code == 200 and answer.headers["x-request-id"] != given


def test_planner_readyz_is_status_only(redis_server: RedisServer) -> None:
    """Probes are open to anyone (and cross-origin): they say what is missing, not where it is."""
    dead_port = free_port()
    running = start_planner(redis_server.url, OMOST_PLANNER_LLM_URL=f"http://127.0.0.1:{dead_port}/v1",
                            OMOST_PLANNER_CONNECT_TIMEOUT_SECONDS="1")  # fmt: skip
    try:
        ready = httpx.get(f"{running.url}/readyz", timeout=30)
    finally:
        running.child.stop()
    assert ready.status_code == 503
    assert ready.json() == {"status": "not ready", "llm": "unreachable", "redis": "ok"}
    assert str(dead_port) in running.child.log()  # the details are in the log
