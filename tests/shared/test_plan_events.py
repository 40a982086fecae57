"""The plan stream's events are the contract's models (``shared.plans``): what the planner's router
sends (``plan_event_sse``) is what the typed client reads back (``read_plan_event``) and what the
playground's reader (``plan_stream.js``, run under node) understands, event by event."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.canvas import Canvas, GlobalDescription
from shared.plans import (
    PLAN_EVENTS,
    PlanDelta,
    PlanError,
    PlanEvent,
    PlanResult,
    PlanRetry,
    plan_event_sse,
    read_plan_event,
)

ROOT = Path(__file__).resolve().parents[2]
READER = ROOT / "planner_service" / "static" / "playground" / "plan_stream.js"
NODE = shutil.which("node")

CANVAS = Canvas(global_description=GlobalDescription(description="a fox in snow", HTML_web_color_name="white"))
PLAN = PlanResult(canvas=CANVAS, code="canvas = Canvas()", attempts=2)
FAILED = PlanError(title="Bad Gateway", status=502, detail="the answer did not parse", raw="junk", attempts=3)


def test_every_event_round_trips_through_its_sse_form() -> None:
    events: list[PlanEvent] = [PlanDelta(text="canvas"), PlanRetry(attempt=2, error="line 1: bad"), PLAN, FAILED]
    assert {type(e) for e in events} == set(PLAN_EVENTS.values())
    for event in events:
        sse = plan_event_sse(event)
        assert sse["event"] == event.event and json.loads(sse["data"]) == event.model_dump(mode="json")
        assert read_plan_event(sse["event"], sse["data"]) == event
    # The wire shapes the SSE docs promise (docs/planner.md), unchanged by the typing.
    assert json.loads(plan_event_sse(PlanDelta(text="x"))["data"]) == {"text": "x"}
    assert json.loads(plan_event_sse(PlanRetry(attempt=3, error="e"))["data"]) == {"attempt": 3, "error": "e"}
    assert json.loads(plan_event_sse(FAILED)["data"])["raw"] == "junk"  # a problem's extensions travel along


def test_unknown_events_are_skipped_and_malformed_ones_refused() -> None:
    assert read_plan_event("progress", "{}") is None  # a newer server's event
    with pytest.raises(ValueError, match="malformed 'retry'"):
        read_plan_event("retry", '{"attempt": "two"}')


def test_the_playground_reader_handles_every_event_of_the_contract() -> None:
    cases = set(re.findall(r'case "([a-z]+)":', READER.read_text()))
    assert set(PLAN_EVENTS) <= cases, f"plan_stream.js does not handle {set(PLAN_EVENTS) - cases}"


def _read_in_node(events: list[PlanEvent]) -> dict:
    result = subprocess.run(
        [NODE, str(ROOT / "tests" / "playground" / "plan_stream_reader.mjs")],  # type: ignore[list-item]
        input=json.dumps([plan_event_sse(e) for e in events]),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(NODE is None, reason="node is not installed; the playground's reader runs under node")
def test_the_playground_reader_reads_the_contracts_events() -> None:
    streamed = _read_in_node(
        [PlanDelta(text="can"), PlanRetry(attempt=2, error="line 1: bad"), PlanDelta(text="canvas"),
         PlanDelta(text=" = 1"), PLAN]
    )
    assert streamed["texts"] == ["can", "", "canvas", "canvas = 1"]  # a retry drops the text so far
    assert streamed["retries"] == [{"attempt": 2, "error": "line 1: bad"}]
    assert streamed["plan"] == PLAN.model_dump(mode="json") and streamed["error"] is None
    failed = _read_in_node([PlanDelta(text="x"), FAILED])
    assert failed["error"] == {"message": "the answer did not parse", "status": 502} and failed["plan"] is None
