"""docs/queue-protocol.md must name the keys, fields and message the code really uses."""

from __future__ import annotations

from pathlib import Path

import shared.queue
from shared.jobs import JobEvent, RenderRequest
from shared.queue import EVENT_FIELD, GROUP, MESSAGE_FIELD, WEBHOOK_GROUP, QueueKeys, QueueMessage, Rec, initial_record

TRANSITIONS = (
    "submit", "claim", "progress", "request_cancel", "finish", "fail", "requeue", "dead_letter", "webhook_attempted"
)  # fmt: skip

DOC = (Path(__file__).resolve().parents[2] / "docs" / "queue-protocol.md").read_text()


def test_key_names_match() -> None:
    keys = QueueKeys("{p}")
    names = [
        keys.stream,
        keys.dead_letter,
        keys.workers,
        keys.metrics,
        keys.job("{id}"),
        keys.events("{id}"),
        keys.image("{id}", "{n}"),  # type: ignore[arg-type]
        keys.worker("{name}"),
        keys.owner_index("{submitter}"),
        keys.all_jobs_index,
        f"{keys.prefix}idempotency:{{sha256(key)}}",
        keys.webhooks,
        keys.stream_of("{model}"),
        keys.models,
        keys.model_info("{name}"),
    ]
    for name in names:
        assert f"`{name}`" in DOC, name
    assert f"`{GROUP}`" in DOC and f"`{WEBHOOK_GROUP}`" in DOC
    assert f"field `{MESSAGE_FIELD}`" in DOC and f"field `{EVENT_FIELD}`" in DOC
    assert "`omost:`" in DOC and QueueKeys().prefix == "omost:"


def test_message_and_record_fields_are_documented() -> None:
    for name in QueueMessage.model_fields:
        assert f"`{name}`" in DOC, name
    message = QueueMessage(job_id="x", request=RenderRequest.model_validate({"canvas": _canvas()}), webhook_url="u")
    for name in initial_record(message):
        assert f"`{name}`" in DOC, name
    for name in JobEvent.model_fields:
        assert f'"{name}"' in DOC or f"`{name}`" in DOC, name


def test_every_record_field_is_documented() -> None:
    fields = [value for name, value in vars(Rec).items() if name.isupper()]
    assert len(fields) > 15
    for field in fields:
        assert f"`{field}`" in DOC, field


def test_every_transition_is_a_function_the_doc_describes() -> None:
    """The *Transitions* table names each function of the state machine, and each exists in shared.queue."""
    table = DOC.split("## Transitions", 1)[1].split("\n## ", 1)[0]
    for name in TRANSITIONS:
        assert callable(getattr(shared.queue, name)), name
        assert f"| `{name}` |" in table, name
    assert "`SUBMIT_SCRIPT`" in DOC and shared.queue.SUBMIT_SCRIPT.strip()


def _canvas() -> dict:
    return {"global_description": {"description": "a cat", "HTML_web_color_name": "red"}}


def test_every_setting_is_documented() -> None:
    from render_service.settings import RenderSettings

    service_doc = (Path(__file__).resolve().parents[2] / "docs" / "render-service.md").read_text()
    for name, field in RenderSettings.model_fields.items():
        alias = field.validation_alias  # the settings both services read unprefixed (OMOST_REDIS_*, OMOST_QUEUE_*)
        choices = getattr(alias, "choices", None)  # AliasChoices: its first name is the documented one
        env = alias if isinstance(alias, str) else choices[0] if choices else f"OMOST_RENDER_{name.upper()}"
        assert f"`{env}`" in service_doc, env
