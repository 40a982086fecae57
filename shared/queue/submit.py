"""``submit``: the one way a job enters the queue, as one Lua script so that admission (work budget,
queue depth, idempotency) and the enqueue with its submitter are a single atomic step."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

import redis.asyncio

from shared.jobs import DEFAULT_MODEL, RenderRequest, megapixel_steps, over_budget
from shared.queue.durability import Durability
from shared.queue.errors import IdempotencyConflict, OverBudget, QueueFull, QuotaExceeded
from shared.queue.keys import DEFAULT_PREFIX, DEFAULT_TTL_SECONDS, EVENT_FIELD, MESSAGE_FIELD, QueueKeys
from shared.queue.record import Rec, initial_record
from shared.queue.wire import QueueMessage, make_event, new_job_id, text

SUBMIT_SCRIPT = """
local existing_entry = redis.call('HGET', KEYS[2], '$ENTRY_ID')
if existing_entry then return {'created', existing_entry} end
local budget = tonumber(ARGV[9])
if budget > 0 and tonumber(ARGV[8]) > budget then return {'over_budget', ARGV[8]} end
local has_key = ARGV[5] ~= ''
if has_key then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    local job_id, fingerprint = string.match(existing, '^([^:]*):(.*)$')
    if job_id and redis.call('EXISTS', ARGV[6] .. job_id) == 1 then
      return {'replay', job_id, fingerprint}
    end
  end
end
local now_ms = tonumber(ARGV[12])
local hourly = tonumber(ARGV[13])
if hourly > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', now_ms - 3600000)
  local used = 0
  for _, member in ipairs(redis.call('ZRANGE', KEYS[8], 0, -1)) do
    used = used + tonumber(string.match(member, '^([^:]+):'))
  end
  if used + tonumber(ARGV[8]) > hourly then
    local oldest = redis.call('ZRANGE', KEYS[8], 0, 0, 'WITHSCORES')
    local free_at = oldest[2] and (tonumber(oldest[2]) + 3600000) or now_ms
    return {'quota_work', tostring(used), tostring(free_at - now_ms)}
  end
end
local at_once = tonumber(ARGV[14])
if at_once > 0 then
  local active = 0
  for _, job in ipairs(redis.call('SMEMBERS', KEYS[9])) do
    local status = redis.call('HGET', ARGV[6] .. job, '$STATUS')
    if status == 'queued' or status == 'running' then active = active + 1 else redis.call('SREM', KEYS[9], job) end
  end
  if active >= at_once then return {'quota_jobs', tostring(active)} end
end
local limit = tonumber(ARGV[1])
if limit > 0 then
  local depth = redis.call('XLEN', KEYS[1])
  if depth >= limit then return {'full', tostring(depth)} end
end
local ttl = tonumber(ARGV[2])
local entry = redis.call('XADD', KEYS[1], '*', '$MESSAGE_FIELD', ARGV[3])
local record = {}
for i = 15, #ARGV do record[#record + 1] = ARGV[i] end
record[#record + 1] = '$ENTRY_ID'
record[#record + 1] = entry
redis.call('HSET', KEYS[2], unpack(record))
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('XADD', KEYS[3], '*', '$EVENT_FIELD', ARGV[4])
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('HINCRBY', KEYS[4], 'jobs_submitted_total', 1)
if has_key then redis.call('SET', KEYS[5], ARGV[5], 'EX', ttl) end
local indexes = {KEYS[7]}
if ARGV[10] ~= '' then indexes[2] = KEYS[6] end
for _, index in ipairs(indexes) do
  redis.call('ZADD', index, now_ms, ARGV[11])
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now_ms - ttl * 1000)
  redis.call('EXPIRE', index, ttl)
end
if hourly > 0 then
  redis.call('ZADD', KEYS[8], now_ms, ARGV[8] .. ':' .. ARGV[11])
  redis.call('PEXPIRE', KEYS[8], 3600000)
end
if at_once > 0 then
  redis.call('SADD', KEYS[9], ARGV[11])
  redis.call('EXPIRE', KEYS[9], ttl)
end
return {'created', entry}
""".replace("$MESSAGE_FIELD", MESSAGE_FIELD).replace("$EVENT_FIELD", EVENT_FIELD).replace("$ENTRY_ID", Rec.ENTRY_ID)
SUBMIT_SCRIPT = SUBMIT_SCRIPT.replace("$STATUS", Rec.STATUS)
"""The Lua script of :func:`submit`, for enqueuers in any language (``EVAL SUBMIT_SCRIPT 9 ...``).

One script, so "is the job within budget / is the key already used / is the queue full" and the
enqueue are one atomic step: concurrent submits can neither overshoot the depth limit nor both
create a job for one key, and a job is in its submitter's index (and the index of all jobs, which the
admin lists) from its first moment.
KEYS: stream, job record, job events, metrics, idempotency key (any key, e.g. the stream, if none),
the submitter's index ``{p}render-index:{submitter}`` (any key if none), the index of all jobs
``{p}render-index:*``, the submitter's work of the last hour ``{p}quota:{submitter}:work`` and its
jobs that may be active ``{p}quota:{submitter}:active`` (any keys without quotas).
ARGV: max depth (0: no limit), ttl, message JSON, ``queued`` event JSON, idempotency value
``{id}:{fingerprint}`` ("" if none), job key prefix ``{p}render:``, fingerprint, the job's
megapixel-steps, the budget (0: no limit), submitter ("" if none), job id, now in ms, the submitter's
megapixel-steps per hour (0: no quota), its jobs at once (0: no quota), then the record's field/value
pairs. The job id is minted by the caller, so a call retried after a lost reply (a connection cut, a
failover) finds its own record and answers ``created`` again. Answers ``created, <entry id>`` /
``replay, <job id>, <fingerprint>`` / ``full, <depth>`` / ``over_budget, <megapixel-steps>`` /
``quota_work, <used>, <ms until the oldest leaves the hour>`` / ``quota_jobs, <active>``.
"""


class SubmitQuota(NamedTuple):
    """A submitter's own limits (a named token's), checked by the submit script."""

    megapixel_steps_per_hour: float | None = None
    max_concurrent_jobs: int | None = None


class Submitted(NamedTuple):
    job_id: str
    created: bool
    """False: an idempotent replay of an earlier submit; ``job_id`` is that job's."""


def _request_fingerprint(request: RenderRequest, webhook_url: str | None) -> str:
    body = json.dumps({"request": request.model_dump(mode="json"), "webhook_url": webhook_url}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


async def submit(
    client: redis.asyncio.Redis,
    request: RenderRequest,
    *,
    prefix: str = DEFAULT_PREFIX,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    max_queue_depth: int | None = None,
    max_megapixel_steps: float | None = None,
    submitter: str | None = None,
    quota: SubmitQuota | None = None,
    durability: Durability = Durability(),
    trace_context: Mapping[str, str] | None = None,
) -> Submitted:
    """Queue a render job: record (status ``queued``), first event and stream entry, all at once.

    With ``idempotency_key``, a second call with the same key and request returns the first job
    (``created`` False) without queueing again, and raises :class:`IdempotencyConflict` if the
    request differs. Raises :class:`QueueFull` when ``max_queue_depth`` is given and the stream
    already holds that many jobs, :class:`OverBudget` when the job costs more than
    ``max_megapixel_steps``. With ``submitter``, the record names it and the job enters the
    submitter's index. With ``quota`` (the submitter's own), :class:`QuotaExceeded` when its work in the
    last hour or its jobs at once would pass it. ``trace_context`` (``traceparent``, ``tracestate``)
    travels in the message, so the worker's spans join the submitter's trace. Every check runs inside
    the same Lua script as the enqueue, so replicas together cannot overshoot it. With
    ``durability.replicas``, a new job counts only once that many replicas hold it (``WAIT`` on the
    script's connection); raises :class:`NotReplicated` otherwise.
    """
    hourly = quota.megapixel_steps_per_hour if quota else None
    at_once = quota.max_concurrent_jobs if quota else None
    quota_owner = submitter or ""
    keys = QueueKeys(prefix, model=request.model)  # the job goes on its model's stream
    trace = trace_context or {}
    message = QueueMessage(
        job_id=new_job_id(),
        request=request,
        webhook_url=webhook_url,
        ttl_seconds=ttl_seconds,
        traceparent=trace.get("traceparent"),
        tracestate=trace.get("tracestate"),
    )
    fingerprint = _request_fingerprint(request, webhook_url) if idempotency_key is not None else ""
    idem_key = keys.idempotency(idempotency_key) if idempotency_key is not None else keys.stream
    record = [part for pair in initial_record(message, submitter).items() for part in pair]
    event = make_event("queued").model_dump_json(exclude_none=True)
    args: list[Any] = [
        keys.stream,
        keys.job(message.job_id),
        keys.events(message.job_id),
        keys.metrics,
        idem_key,
        keys.owner_index(submitter) if submitter else keys.stream,
        keys.all_jobs_index,
        keys.quota_work(quota_owner) if hourly else keys.stream,
        keys.quota_active(quota_owner) if at_once else keys.stream,
        max_queue_depth or 0,
        ttl_seconds,
        message.model_dump_json(),
        event,
        f"{message.job_id}:{fingerprint}" if idempotency_key is not None else "",
        keys.job(""),
        fingerprint,
        repr(megapixel_steps(request)),
        repr(float(max_megapixel_steps or 0)),
        submitter or "",
        message.job_id,
        int(time.time() * 1000),
        repr(float(hourly or 0)),
        at_once or 0,
        *record,
    ]
    if durability.replicas:
        # One pipeline, so WAIT runs on the connection that ran the script.
        async with client.pipeline(transaction=False) as pipe:
            pipe.eval(SUBMIT_SCRIPT, 9, *args)
            pipe.execute_command("WAIT", durability.replicas, durability.timeout_ms)
            answer, acked = await pipe.execute()
    else:
        answer, acked = await client.eval(SUBMIT_SCRIPT, 9, *args), None
    outcome = [text(part) for part in answer]
    if outcome[0] == "over_budget":
        raise OverBudget(over_budget(request, max_megapixel_steps) or f"over budget ({outcome[1]})")
    if outcome[0] == "quota_work":
        retry_after = max(1, -(-int(outcome[2]) // 1000))  # the oldest job of the hour leaves it then
        raise QuotaExceeded.work(hourly or 0, float(outcome[1]), retry_after)
    if outcome[0] == "quota_jobs":
        raise QuotaExceeded.jobs(int(outcome[1]), at_once or 0)
    if outcome[0] == "full":
        raise QueueFull(int(outcome[1]), max_queue_depth or 0, request.model or DEFAULT_MODEL)
    if outcome[0] == "replay":
        if outcome[2] != fingerprint:
            raise IdempotencyConflict(outcome[1])
        return Submitted(outcome[1], False)
    if acked is not None:
        durability.check(acked)
    return Submitted(message.job_id, True)
