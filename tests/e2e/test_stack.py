"""The whole stack over HTTP, everything real: redis-server, the planner with SmolLM2 through the
embedded llama.cpp server, the render API and one worker with the tiny model, each its own process,
started by ``omost serve``, with OpenTelemetry traces on (exported to a receiver in the test)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from PIL import Image

from shared.cli.stack import free_port
from shared.client import OmostAPIError, OmostClient, RenderFailed
from shared.jobs import RenderRequest
from shared.plans import GenerationAccepted
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.prometheus_server import OBSERVABILITY, PrometheusServer, dashboard_expressions, metric_names
from tests.support import RedisServer, StepGate, wait_for_http, wait_until

# SmolLM2 is small and fast, but a full 4096-token plan on two shared cores is minutes: bound it. A plan
# cut off by the bound still yields the canvas of its complete calls (the global description comes first),
# which is all these tests need (the other whole-stack tests, tests/cli and tests/integrations, give 350-400).
PLAN_TOKENS = 400
SMALL = {"width": 64, "height": 64, "steps": 3}


@dataclass
class Stack:
    planner_url: str
    render_url: str
    log: Path
    env: dict[str, str]
    """What a user's shell holds: the same cache folder as ``serve``, so commands find it."""
    gate: StepGate


@pytest.fixture(scope="module")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, otlp: OtlpReceiver) -> Iterator[Stack]:
    """``omost serve`` as a user runs it, stopped with Ctrl-C (SIGINT) at the end; traced, as the
    standard OTEL_* variables ask."""
    redis = RedisServer().start()
    planner_port, render_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cache = tmp_path_factory.mktemp("cache")
    gate = StepGate(tmp_path_factory.mktemp("step-gate"))
    env = {
        **os.environ,
        "OMOST_RENDER_KEY_PREFIX": "e2e:",
        "OMOST_PLANNER_KEY_PREFIX": "e2e:",
        "XDG_CACHE_HOME": str(cache),
        "OMOST_RENDER_TEST_STEP_GATE": str(gate.folder),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second, not 5 s
    }
    env.pop("OTEL_SERVICE_NAME", None)  # each process names itself
    args = [
        sys.executable,
        "-m",
        "shared.cli",
        "serve",
        "--planner-port",
        str(planner_port),
        "--render-port",
        str(render_port),
        "--redis-url",
        redis.url,
        "--model",
        str(tiny_model),
        "--workers",
        "1",
    ]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    running = Stack(f"http://127.0.0.1:{planner_port}", f"http://127.0.0.1:{render_port}", log, env, gate)
    try:
        wait_for_http(f"{running.render_url}/readyz", timeout=300, process=process)
        wait_for_http(f"{running.planner_url}/readyz", timeout=300, process=process)
        wait_until(lambda: "playground" in log.read_text(), 30, what="the playground address printed")
        yield running
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(90)
        redis.stop()
    assert code == 0, log.read_text()[-3000:]
    assert f"playground http://127.0.0.1:{planner_port}/" in log.read_text()
    for url in (running.planner_url, running.render_url):
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", timeout=2)


@pytest.fixture()
def client(stack: Stack) -> Iterator[OmostClient]:
    with OmostClient(stack.planner_url, stack.render_url, timeout=300) as c:
        yield c


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


def test_prompt_to_plan_to_png(stack: Stack, otlp: OtlpReceiver, client: OmostClient) -> None:
    """Prompt to PNG in one call, as the caller's trace: one trace from the planner through the LLM
    and the queue to the worker (see :func:`check_one_trace`)."""
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    body = {"prompt": "a cat and a dog on a sofa", "max_new_tokens": PLAN_TOKENS, "seed": 1}
    headers = {"traceparent": f"00-{trace_id}-{caller}-01"}  # the caller's span: the trace is the caller's
    answer = httpx.post(
        f"{stack.planner_url}/v1/generations",
        json={**body, "render": {**SMALL, "width": 96, "seed": 7}},
        headers=headers,
        timeout=300,
    )
    assert answer.status_code == 202, answer.text
    accepted = GenerationAccepted.model_validate(answer.json())
    assert accepted.canvas.global_description.description
    job = client.wait(accepted.urls.self_, timeout=300)
    assert job.status == "succeeded"
    assert job.seeds == [7]
    assert png_size(client.image(job, 0)) == (96, 64)
    check_one_trace(stack, otlp, trace_id, caller, job.id)


def test_editing_turn_keeps_the_conversation(client: OmostClient) -> None:
    first = client.plan("a red car in a city street", max_new_tokens=PLAN_TOKENS, seed=2)
    assert first.conversation_id
    second = client.plan("make the car blue", conversation_id=first.conversation_id, max_new_tokens=PLAN_TOKENS, seed=3)
    assert second.conversation_id == first.conversation_id
    assert second.canvas.global_description.description


def test_cancel_a_render(stack: Stack, client: OmostClient) -> None:
    canvas = client.plan("a lighthouse by the sea", max_new_tokens=PLAN_TOKENS, seed=4).canvas
    with stack.gate.holding_all(), pytest.raises(RenderFailed) as info:  # queued or held: never done first
        accepted = client.submit(RenderRequest(canvas=canvas, **SMALL))
        client.cancel(accepted.id)
        client.wait(accepted.id, timeout=120)
    assert info.value.job.status == "canceled"


def test_cli_generate_writes_the_file(stack: Stack, otlp: OtlpReceiver, tmp_path: Path) -> None:
    """No --url: the command finds the running ``serve``, streams the plan and shows progress lines."""
    out = tmp_path / "cli.png"
    args = [
        sys.executable,
        "-m",
        "shared.cli",
        "generate",
        "a house on a hill",
        "-o",
        str(out),
        "--width",
        "64",
        "--height",
        "96",
        "--steps",
        "2",
        "--seed",
        "5",
        "--max-new-tokens",
        str(PLAN_TOKENS),
    ]
    result = subprocess.run(args, env=stack.env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert png_size(out.read_bytes()) == (64, 96)
    assert "using the stack of `omost serve` (pid " in result.stderr
    assert " tokens/s" in result.stderr  # the planning progress line (stderr is a pipe: plain lines)
    assert "wrote" in result.stderr
    # Traced like the services (OTEL_* in its environment): the command is one trace, down to the worker.
    (command,) = otlp.find("omost generate")
    assert command.service == "omost-cli" and command.parent_id == ""
    wait_until(lambda: any(s.name == "render job" for s in otlp.trace(command.trace_id)), 60, what="the worker's span")
    calls = [s for s in otlp.trace(command.trace_id) if s.parent_id == command.span_id]
    assert calls and all(s.kind == "CLIENT" and s.service == "omost-cli" for s in calls)


def test_cli_edit_continues_on_the_remembered_planner(stack: Stack, tmp_path: Path) -> None:
    env = {**stack.env, "XDG_CACHE_HOME": str(tmp_path / "cache")}  # no serve state here: only the memory
    plan = [
        sys.executable,
        "-m",
        "shared.cli",
        "plan",
        "a red car",
        "--url",
        stack.planner_url,
        "--max-new-tokens",
        str(PLAN_TOKENS),
        "--seed",
        "6",
    ]
    assert subprocess.run(plan, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    edit = [sys.executable, "-m", "shared.cli", "edit", "make the car blue", "--max-new-tokens", str(PLAN_TOKENS)]
    result = subprocess.run(edit, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"using the planner of the last conversation, {stack.planner_url}" in result.stderr
    assert "canvas = Canvas()" in result.stdout


COUNTERS = [
    'max(omost_render_jobs_finished_total{status="succeeded"})',
    "max(omost_render_jobs_submitted_total)",
    "max(omost_render_queue_wait_seconds_count)",
    "max(omost_render_step_seconds_count)",
    'max(omost_render_phase_seconds_count{phase="denoise"})',
    'max(omost_render_phase_seconds_count{phase="png"})',
    "max(omost_render_busy_seconds_total)",
    "sum(omost_planner_plans_total)",
    "max(omost_planner_completion_tokens_total)",
    "max(omost_planner_llm_request_seconds_count)",
]
"""What one plan and one render must move, read back from Prometheus."""
KITE = {"global_description": {"description": "a kite", "HTML_web_color_name": "skyblue"}}
UP_GAUGES = ("omost_planner_llm_up", "omost_planner_redis_up", "omost_render_redis_up", "omost_render_workers")


def test_prometheus_scrapes_the_stack_and_a_job_moves_its_counters(
    stack: Stack, client: OmostClient, tmp_path: Path
) -> None:
    """Debian's Prometheus, with deploy/observability's config and alert rules, scrapes this stack every second."""
    targets = {
        "omost-planner": stack.planner_url.removeprefix("http://"),
        "omost-render-api": stack.render_url.removeprefix("http://"),
    }
    prometheus = PrometheusServer(tmp_path / "prometheus", targets).start()
    try:

        def scraped() -> bool:
            active = prometheus.api("targets")["activeTargets"]
            return len(active) == 2 and all(t["health"] == "up" for t in active) and bool(prometheus.query("up"))

        wait_until(scraped, 30, 0.5, "both targets scraped and up")
        before = {expression: prometheus.value(expression) for expression in COUNTERS}
        try:
            client.plan("a kite over a beach", max_new_tokens=48, seed=8)
        except OmostAPIError as exc:
            assert exc.status_code == 502, exc  # an answer cut too short to parse still counts
        accepted = client.submit(RenderRequest(canvas=KITE, **SMALL))
        assert client.wait(accepted.id, timeout=120).status == "succeeded"

        def moved() -> list[str]:
            return [e for e in COUNTERS if prometheus.value(e) <= before[e]]

        with contextlib.suppress(TimeoutError):
            wait_until(lambda: not moved(), 30, 0.5, "every counter moved")
        assert moved() == []
        for gauge in UP_GAUGES:
            assert prometheus.value(gauge) >= 1, gauge
        # The dashboard's queries: each evaluates on the real server and reads only names it scraped.
        dashboard = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
        scraped_names = set(prometheus.api("label/__name__/values"))
        for expression in dashboard_expressions(dashboard, rate_interval="1m"):
            assert metric_names(expression) <= scraped_names, expression
            prometheus.query(expression)
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        shipped = yaml.safe_load((OBSERVABILITY / "alerts.yml").read_text())["groups"]
        assert len(rules) == sum(len(group["rules"]) for group in shipped), rules  # every rule loaded
        assert all(rule["health"] == "ok" for rule in rules), rules
        assert not [rule["name"] for rule in rules if rule["state"] == "firing"]
    finally:
        prometheus.stop()


def check_one_trace(stack: Stack, otlp: OtlpReceiver, trace_id: str, caller: str, job_id: str) -> None:
    """planner -> LLM -> render submit -> worker, parent to child, across the planner's and the
    worker's processes; the job's trace context travels in the queue message; log lines carry the
    trace id."""

    def spans() -> dict[str, ReceivedSpan]:
        return {span.name: span for span in otlp.trace(trace_id)}

    wait_until(lambda: "render job" in spans(), 60, what="the worker's spans exported")
    wait_until(lambda: {"settle", "image store", "engine decode"} <= set(spans()), 60, what="the settle spans")
    got = spans()
    server = got["POST /v1/generations"]
    assert (server.parent_id, server.service, server.kind) == (caller, "omost-planner", "SERVER")
    plan = got["plan"]
    assert plan.parent_id == server.span_id
    assert plan.attributes["omost.plan.max_tokens"] == PLAN_TOKENS
    assert plan.attributes["omost.plan.completion_tokens"] > 0
    assert plan.attributes["omost.plan.grammar_profile"]
    (llm,) = [s for s in otlp.trace(trace_id) if s.kind == "CLIENT" and s.parent_id == plan.span_id]
    assert "chat/completions" in str(llm.attributes.get("url.full", llm.attributes.get("http.url")))
    submit = got["render submit"]
    assert (submit.parent_id, submit.kind, submit.attributes["omost.job.id"]) == (server.span_id, "PRODUCER", job_id)
    run = got["render job"]
    assert (run.parent_id, run.service, run.kind) == (submit.span_id, "omost-render-worker", "CONSUMER")
    assert run.attributes["omost.job.id"] == job_id and run.attributes["omost.job.status"] == "succeeded"
    assert run.attributes["omost.render.steps"] == SMALL["steps"] and run.attributes["omost.render.attention"]
    assert run.attributes["omost.queue.wait_seconds"] >= 0 and "omost.render.regions" in run.attributes
    for name in ("claim", "render", "png encode", "settle"):
        assert got[name].parent_id == run.span_id, name
    for name in ("engine encode", "engine denoise", "engine decode"):
        assert got[name].parent_id == got["render"].span_id, name
    steps = [event for event in got["engine denoise"].events if event[0] == "step"]
    assert [attributes["omost.step"] for _, attributes in steps] == list(range(1, SMALL["steps"] + 1))
    assert got["image store"].parent_id == got["settle"].span_id
    assert all(not span.error for span in otlp.trace(trace_id))
    where = re.search(r"logs in (\S+);", stack.log.read_text())  # serve names its children's log folder
    assert where is not None
    logs = Path(where[1])
    worker_log = (logs / "render-worker-0.log").read_text().splitlines()
    logged = [json.loads(line) for line in worker_log if trace_id in line]
    assert any(line["msg"] == "job started" and line["span_id"] == run.span_id for line in logged), worker_log[-5:]


def test_a_refused_request_says_its_problem_on_its_span(stack: Stack, otlp: OtlpReceiver) -> None:
    trace_id = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace_id}-{'2' * 16}-01"}
    answer = httpx.post(f"{stack.render_url}/v1/renders", json={"canvas": {}}, headers=headers, timeout=30)
    assert answer.status_code == 422
    wait_until(lambda: otlp.trace(trace_id), 30, what="the server span exported")
    (server,) = otlp.trace(trace_id)
    assert (server.name, server.service) == ("POST /v1/renders", "omost-render-api")
    assert server.attributes["omost.problem.type"] == answer.json()["type"]
    assert server.attributes["omost.problem.title"] == answer.json()["title"]
    assert not server.error  # a 4xx is the caller's problem, not the server's failure
