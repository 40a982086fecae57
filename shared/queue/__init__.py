"""The render job's state machine in Redis: key names, the JSON message, the record, every transition,
and the repository every service goes through.

Everything here is plain Redis (hashes, strings, streams with one consumer group) so that any
language can enqueue a job; ``docs/queue-protocol.md`` is the prose version of this package, section
by section, and must stay in step with it. No torch or FastAPI here: the planner imports this module.

A job moves ``queued -> running -> succeeded | failed | canceled`` (and ``running -> queued`` when a
stopping worker gives it back). Each transition is one function below, side by side:

=================  =====================================================  ==========================
transition         what it writes, in one Redis transaction               who calls it
=================  =====================================================  ==========================
:func:`submit`     record, ``queued`` event, stream entry (Lua script:    API, planner, any client
                   idempotency and queue-depth checks are atomic with it)
:func:`claim`      ``running`` + fresh owner token, or settle at once      worker, after XREADGROUP
:func:`progress`   step counters and a ``progress`` event                  worker, each step
:func:`request_cancel`  ``cancel_requested``; a queued job ends at once    API (DELETE)
:func:`finish`     terminal record + event, XACK + XDEL, webhook delivery  worker
:func:`fail`       :func:`finish` as ``failed`` plus a dead-letter copy    worker
:func:`requeue`    a fresh entry, the old one acked, record ``queued``     worker on shutdown
:func:`dead_letter`  a message nobody can run, acked and copied aside      worker
:func:`webhook_attempted`  a webhook POST's outcome; the delivery acked if over  worker's webhook sender
=================  =====================================================  ==========================

Except :func:`submit`, a transition only *buffers* commands on a ``MULTI`` pipeline: the same
function serves the synchronous worker and the asyncio API. Transitions that depend on the record
run inside :func:`transact` / :func:`atransact`, which ``WATCH`` the record, read it, and retry
the whole decision if it changed before ``EXEC``.

One module per job: :mod:`~shared.queue.keys` (key names), :mod:`~shared.queue.wire` (messages,
events, reply decoding), :mod:`~shared.queue.record` (the record's fields and :class:`JobRecord`:
the only code that names a field), :mod:`~shared.queue.transitions`, :mod:`~shared.queue.submit`
(the Lua script: admission and enqueue in one step), :mod:`~shared.queue.repository`
(:class:`RenderQueue`, the one reader of a job's keys), :mod:`~shared.queue.images` /
:mod:`~shared.queue.s3` (:class:`ImageStore`), :mod:`~shared.queue.settings`,
:mod:`~shared.queue.connect` (the one Redis client factory, plain or Sentinel), :mod:`~shared.queue.durability`
(``WAIT`` for replicas) and :mod:`~shared.queue.views`.
"""

from shared.jobs import JOB_ID_PATTERN
from shared.queue.durability import Durability
from shared.queue.errors import (
    IdempotencyConflict,
    JobFinished,
    JobNotFound,
    NotReplicated,
    OverBudget,
    QueueFull,
    QuotaExceeded,
)
from shared.queue.images import ImageRedirect, ImagesNotSaved, ImageStore, ImageStoreUnavailable, RedisImages
from shared.queue.keys import (
    ALL_SUBMITTERS,
    DEAD_LETTER_MAXLEN,
    DEFAULT_PREFIX,
    DEFAULT_TTL_SECONDS,
    EVENT_FIELD,
    GROUP,
    MESSAGE_FIELD,
    PROTOCOL_VERSION,
    QUEUE_WAIT_SECONDS_BUCKETS,
    RENDER_SECONDS_BUCKETS,
    STEP_SECONDS_BUCKETS,
    WEBHOOK_GROUP,
    QueueKeys,
)
from shared.queue.record import JobRecord, Rec, decode_time, encode_time, initial_record, result_fields
from shared.queue.repository import RenderQueue, SyncRenderQueue, idempotency_scope
from shared.queue.settings import ImageStoreSettings, QueueSettings
from shared.queue.submit import SUBMIT_SCRIPT, SubmitQuota, Submitted, submit
from shared.queue.transitions import (
    Claim,
    Delivery,
    atransact,
    claim,
    dead_letter,
    fail,
    finish,
    owns,
    progress,
    request_cancel,
    requeue,
    transact,
    webhook_attempted,
    webhook_delivery_id,
)
from shared.queue.views import job_urls, render_job
from shared.queue.wire import (
    QueueMessage,
    StreamEntry,
    decode_hash,
    decode_message,
    encode_message,
    make_event,
    new_job_id,
    queue_event,
    queue_observe,
    read_entries,
    stream_entries,
    text,
)

__all__ = [
    "ALL_SUBMITTERS",
    "DEAD_LETTER_MAXLEN",
    "DEFAULT_PREFIX",
    "DEFAULT_TTL_SECONDS",
    "EVENT_FIELD",
    "GROUP",
    "JOB_ID_PATTERN",
    "MESSAGE_FIELD",
    "PROTOCOL_VERSION",
    "QUEUE_WAIT_SECONDS_BUCKETS",
    "RENDER_SECONDS_BUCKETS",
    "STEP_SECONDS_BUCKETS",
    "SUBMIT_SCRIPT",
    "WEBHOOK_GROUP",
    "Claim",
    "Delivery",
    "Durability",
    "IdempotencyConflict",
    "ImageRedirect",
    "ImageStore",
    "ImageStoreSettings",
    "ImageStoreUnavailable",
    "ImagesNotSaved",
    "JobFinished",
    "JobNotFound",
    "JobRecord",
    "NotReplicated",
    "OverBudget",
    "QueueFull",
    "QueueKeys",
    "QueueMessage",
    "QueueSettings",
    "QuotaExceeded",
    "Rec",
    "RedisImages",
    "RenderQueue",
    "StreamEntry",
    "SubmitQuota",
    "Submitted",
    "SyncRenderQueue",
    "atransact",
    "claim",
    "dead_letter",
    "decode_hash",
    "decode_message",
    "decode_time",
    "encode_message",
    "encode_time",
    "fail",
    "finish",
    "idempotency_scope",
    "initial_record",
    "job_urls",
    "make_event",
    "new_job_id",
    "owns",
    "progress",
    "queue_event",
    "queue_observe",
    "read_entries",
    "render_job",
    "request_cancel",
    "requeue",
    "result_fields",
    "stream_entries",
    "submit",
    "text",
    "transact",
    "webhook_attempted",
    "webhook_delivery_id",
]
