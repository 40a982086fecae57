"""The job record ``{p}render:{id}``: its field names, their encoding, and :class:`JobRecord`, the typed
view every reader outside this package gets. This module is the only one that names a record field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from shared.jobs import JobStatus, RenderRequest
from shared.queue.wire import QueueMessage, decode_hash


class Rec:
    """Field names of the job record hash ``{p}render:{id}``. Every value is a string:

    times are Unix seconds as ``repr(float)``; counts are decimal integers; ``request``, ``seeds``,
    ``timings`` and ``image_keys`` are JSON; ``cancel_requested`` is ``"1"`` once set. Absent fields read as unset.
    """

    ID = "id"
    STATUS = "status"
    REQUEST = "request"
    CREATED_AT = "created_at"
    STARTED_AT = "started_at"
    FINISHED_AT = "finished_at"
    TTL_SECONDS = "ttl_seconds"
    DELIVERIES = "deliveries"
    NUM_IMAGES = "num_images"
    WEBHOOK_URL = "webhook_url"
    WEBHOOK_STATUS = "webhook_status"
    """How the webhook delivery stands: ``pending``, ``retrying: ...``, ``delivered: ...``, ``rejected: ...``,
    ``refused: ...`` or ``failed after N attempts: ...``."""
    WEBHOOK_ID = "webhook_id"
    """The delivery's id, sent as the ``Webhook-Id`` header on every attempt."""
    WEBHOOK_ATTEMPTS = "webhook_attempts"
    WORKER = "worker"
    OWNER = "owner"
    ENTRY_ID = "entry_id"
    PROGRESS_STEP = "progress_step"
    PROGRESS_TOTAL = "progress_total"
    CANCEL_REQUESTED = "cancel_requested"
    ERROR = "error"
    SEEDS = "seeds"
    TIMINGS = "timings"
    MODEL = "model"
    DEVICE = "device"
    IMAGE_KEYS = "image_keys"
    """JSON list of the images' object keys when they live in S3; absent when they are in Redis."""
    SUBMITTER = "submitter"
    """Digest of the credential that submitted the job (:func:`shared.service.auth.token_owner`), written by
    ``submit``; not to be confused with ``owner``, the lease token of the worker running the job."""


def encode_time(seconds: float) -> str:
    return repr(float(seconds))


def decode_time(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def initial_record(message: QueueMessage, submitter: str | None = None) -> dict[str, str]:
    """The job record hash as first written (status ``queued``). Absent fields read as unset."""
    record = {
        Rec.ID: message.job_id,
        Rec.STATUS: "queued",
        Rec.REQUEST: message.request.model_dump_json(),
        Rec.CREATED_AT: encode_time(message.enqueued_at),
        Rec.TTL_SECONDS: str(message.ttl_seconds),
        Rec.DELIVERIES: "0",
        Rec.NUM_IMAGES: "0",
    }
    if message.webhook_url:
        record[Rec.WEBHOOK_URL] = message.webhook_url
    if submitter is not None:
        record[Rec.SUBMITTER] = submitter
    return record


@dataclass(frozen=True)
class JobRecord:
    """One job record, decoded. Absent fields are None (counts 0); ``request`` is parsed on demand."""

    id: str
    status: JobStatus = "queued"
    request_json: str = ""
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    ttl_seconds: int | None = None
    deliveries: int = 0
    num_images: int = 0
    webhook_url: str | None = None
    webhook_status: str | None = None
    webhook_id: str | None = None
    webhook_attempts: int = 0
    worker: str | None = None
    lease: str | None = None
    """The running delivery's fencing token (the protocol's ``owner`` field)."""
    entry_id: str | None = None
    progress_step: int = 0
    progress_total: int | None = None
    cancel_requested: bool = False
    error: str | None = None
    seeds: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    model: str | None = None
    device: str | None = None
    image_keys: list[str] | None = None
    """Object keys of the images in the S3 store; None: the PNGs are in Redis beside the record."""
    submitter: str | None = None

    @classmethod
    def decode(cls, raw: Mapping[Any, Any]) -> JobRecord:
        """From an ``HGETALL`` reply (bytes or text); an empty reply is no record: :class:`ValueError`."""
        record = decode_hash(raw)
        if not record:
            raise ValueError("no job record")
        return cls.from_fields(record)

    @classmethod
    def from_fields(cls, record: Mapping[str, str]) -> JobRecord:
        def optional(name: str) -> str | None:
            return record.get(name) or None

        total = optional(Rec.PROGRESS_TOTAL)
        keys = optional(Rec.IMAGE_KEYS)
        ttl = optional(Rec.TTL_SECONDS)
        return cls(
            id=record[Rec.ID],
            status=cast(JobStatus, record.get(Rec.STATUS) or "queued"),
            request_json=record.get(Rec.REQUEST, ""),
            created_at=decode_time(record.get(Rec.CREATED_AT)) or 0.0,
            started_at=decode_time(record.get(Rec.STARTED_AT)),
            finished_at=decode_time(record.get(Rec.FINISHED_AT)),
            ttl_seconds=int(ttl) if ttl else None,
            deliveries=int(record.get(Rec.DELIVERIES) or 0),
            num_images=int(record.get(Rec.NUM_IMAGES) or 0),
            webhook_url=optional(Rec.WEBHOOK_URL),
            webhook_status=optional(Rec.WEBHOOK_STATUS),
            webhook_id=optional(Rec.WEBHOOK_ID),
            webhook_attempts=int(record.get(Rec.WEBHOOK_ATTEMPTS) or 0),
            worker=optional(Rec.WORKER),
            lease=optional(Rec.OWNER),
            entry_id=optional(Rec.ENTRY_ID),
            progress_step=int(record.get(Rec.PROGRESS_STEP) or 0),
            progress_total=int(total) if total else None,
            cancel_requested=record.get(Rec.CANCEL_REQUESTED) == "1",
            error=optional(Rec.ERROR),
            seeds=json.loads(record.get(Rec.SEEDS) or "[]"),
            timings=json.loads(record.get(Rec.TIMINGS) or "{}"),
            model=optional(Rec.MODEL),
            device=optional(Rec.DEVICE),
            image_keys=list(json.loads(keys)) if keys else None,
            submitter=optional(Rec.SUBMITTER),
        )

    @property
    def request(self) -> RenderRequest:
        return RenderRequest.model_validate_json(self.request_json)


def result_fields(
    *, seeds: list[int], timings: Mapping[str, float], model: str, device: str, num_images: int
) -> dict[str, str]:
    """The fields a succeeded render adds to its record (written by ``finish``)."""
    return {
        Rec.SEEDS: json.dumps([int(s) for s in seeds]),
        Rec.TIMINGS: json.dumps(dict(timings)),
        Rec.MODEL: model,
        Rec.DEVICE: device,
        Rec.NUM_IMAGES: str(num_images),
    }


def image_keys_field(object_keys: list[str]) -> dict[str, str]:
    """The field naming a job's images in the S3 store (written by ``finish`` with the results)."""
    return {Rec.IMAGE_KEYS: json.dumps(object_keys)}
