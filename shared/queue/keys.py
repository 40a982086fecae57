"""Every Redis key of the render queue, and the protocol's constants (docs/queue-protocol.md, *Keys*)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from shared.jobs import DEFAULT_MODEL

PROTOCOL_VERSION = 1
DEFAULT_PREFIX = "omost:"
DEFAULT_TTL_SECONDS = 24 * 3600
GROUP = "render-workers"
"""The one consumer group every worker reads through (group names are not keys, so no prefix)."""
WEBHOOK_GROUP = "webhook-senders"
"""The consumer group through which workers take webhook deliveries from ``{p}webhooks``."""
MESSAGE_FIELD = "message"
"""Stream entries carry one field, ``message``, holding the JSON :class:`QueueMessage`."""
EVENT_FIELD = "event"
"""Event-stream entries carry one field, ``event``, holding a JSON :class:`shared.jobs.JobEvent`."""

ALL_SUBMITTERS = "*"
"""The pseudo-submitter whose index holds every job (:attr:`QueueKeys.all_jobs_index`)."""

DEAD_LETTER_MAXLEN = 10_000
"""The dead-letter stream is capped (approximately, which is cheap) so a flood of bad jobs can't grow it."""


RENDER_SECONDS_BUCKETS: tuple[float, ...] = (0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 20, 30, 60, 120, 300, 600)
QUEUE_WAIT_SECONDS_BUCKETS: tuple[float, ...] = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
STEP_SECONDS_BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
"""Histogram buckets the workers count into the shared metrics hash (see :func:`queue_observe`)."""


@dataclass(frozen=True)
class QueueKeys:
    """Every Redis key of one deployment, all under ``prefix`` so deployments (and tests) can share a
    Redis without seeing each other."""

    prefix: str = DEFAULT_PREFIX
    group: str = GROUP
    model: str | None = None
    """Whose job stream :attr:`stream` is: None or ``default``, the default model's; else that model's."""

    @property
    def stream(self) -> str:
        """The job stream of :attr:`model`: one entry per delivery-able job (see :meth:`stream_of`)."""
        return self.stream_of(self.model)

    def stream_of(self, model: str | None) -> str:
        """One stream per model: ``{p}renders`` for the default model (requests without ``model``),
        ``{p}renders:{name}`` for a named one. Workers read only their model's stream."""
        if model is None or model == DEFAULT_MODEL:
            return f"{self.prefix}renders"
        return f"{self.prefix}renders:{model}"

    def for_model(self, model: str | None) -> QueueKeys:
        """These keys with :attr:`stream` on ``model``'s stream."""
        return replace(self, model=model)

    @property
    def models(self) -> str:
        """Sorted set: model name -> Unix time a worker last registered it (``GET /v1/models``)."""
        return f"{self.prefix}models"

    def model_info(self, name: str) -> str:
        """String: the model's registration (JSON :class:`shared.models.ModelInfo`), expiring unless renewed."""
        return f"{self.prefix}model:{name}"

    @property
    def dead_letter(self) -> str:
        """Jobs given up on: the original message plus ``reason``, ``job_id`` and ``failed_at``."""
        return f"{self.prefix}renders:dead"

    @property
    def workers(self) -> str:
        """Sorted set: worker name -> Unix time of its last heartbeat."""
        return f"{self.prefix}workers"

    @property
    def metrics(self) -> str:
        """Hash of counters the workers and the API increment; ``/metrics`` exports them."""
        return f"{self.prefix}metrics"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}render:{job_id}"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}render:{job_id}:events"

    def image(self, job_id: str, index: int) -> str:
        return f"{self.prefix}render:{job_id}:image:{index}"

    @property
    def image_expiry(self) -> str:
        """Sorted set: object key in the S3 image store -> Unix time it is due for deletion."""
        return f"{self.prefix}images:expiry"

    def worker(self, name: str) -> str:
        """Hash describing a live worker (model, device, pid); expires unless heartbeats refresh it."""
        return f"{self.prefix}worker:{name}"

    def idempotency(self, key: str) -> str:
        # Hashed so that any client-chosen string (spaces, 10 kB, ...) makes a sane key.
        return f"{self.prefix}idempotency:{hashlib.sha256(key.encode()).hexdigest()}"

    @property
    def webhooks(self) -> str:
        """Stream of webhook deliveries due, one entry per job that ended with a ``webhook_url``
        (fields ``job_id``, ``delivery_id``, ``event``), read through :data:`WEBHOOK_GROUP`: written in
        the transaction that ends the job, acked once the delivery is over (delivered, rejected or
        given up on), so a delivery outlives the worker that was sending it."""
        return f"{self.prefix}webhooks"

    def owner_index(self, submitter: str) -> str:
        """Sorted set: the submitter's job ids -> submit time in ms (``GET /v1/renders`` pages it)."""
        return f"{self.prefix}render-index:{submitter}"

    def quota_work(self, submitter: str) -> str:
        """Sorted set: ``{megapixel-steps}:{job id}`` -> submit time in ms, the submitter's work of the last hour
        (kept only for a submitter with an hourly quota)."""
        return f"{self.prefix}quota:{submitter}:work"

    def quota_active(self, submitter: str) -> str:
        """Set: the submitter's job ids that may still be queued or running (kept only for a submitter with a
        quota of jobs at once; ended jobs are dropped at its next submit)."""
        return f"{self.prefix}quota:{submitter}:active"

    @property
    def all_jobs_index(self) -> str:
        """Sorted set: every job id, whoever submitted it (or none) -> submit time in ms: the admin's
        listing. ``*`` is never a submitter (those are ``public``, ``admin`` or a hex digest)."""
        return self.owner_index(ALL_SUBMITTERS)
