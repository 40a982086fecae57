""":class:`RenderQueue`: the one reader of a job's keys (as arq's ``Job`` is). The render API, the
planner's ``/v1/generations`` and ``/v1/images/generations`` and the worker (through
:class:`SyncRenderQueue`) submit, read, wait for, list, cancel and follow jobs and fetch their images
only through it; the state changes themselves are the named transitions of
:mod:`shared.queue.transitions` and the submit script, each one transaction.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.exceptions import ResponseError

from shared.jobs import (
    DEFAULT_MODEL,
    JOB_ID_PATTERN,
    TERMINAL_STATUSES,
    JobEvent,
    JobStatus,
    RenderRequest,
    SamplingParams,
    over_budget,
)
from shared.models import ModelInfo
from shared.queue.durability import Durability
from shared.queue.errors import JobNotFound, OverBudget, QueueFull
from shared.queue.images import ImageRedirect, ImageStore, ImageStoreUnavailable, RedisImages
from shared.queue.keys import EVENT_FIELD, MESSAGE_FIELD, QueueKeys
from shared.queue.models import find_model, list_models
from shared.queue.record import JobRecord, Rec
from shared.queue.settings import QueueSettings
from shared.queue.submit import SubmitQuota, Submitted, submit
from shared.queue.transitions import atransact, request_cancel, transact
from shared.queue.wire import decode_hash, read_entries, stream_entries, text

T = TypeVar("T")

MAX_PAGE = 100
MAX_SCANNED = 1000  # index entries one listing may read while filtering; bounds its cost
CURSOR_PATTERN = re.compile(r"^(\d{1,17}):([A-Za-z0-9_-]{1,64})$")
EVENTS_PER_READ = 100
MODEL_CACHE_SECONDS = 2.0
"""How long a submit trusts a model registration it read, and never past that registration's own
expiry: a model whose last registration expired is refused at once, a newly registered one is found at
once (only what is served is kept), and a worker with other defaults under the same name is seen within this."""


def idempotency_scope(submitter: str, key: str) -> str:
    """The Idempotency-Key as stored: scoped to the credential, so two clients never share one."""
    return f"{submitter}:{key}"


def _event(fields: Mapping[Any, Any]) -> JobEvent:
    return JobEvent.model_validate_json(decode_hash(fields)[EVENT_FIELD])


class RenderQueue:
    """Jobs in Redis for an asyncio service. ``client`` must not decode replies (:mod:`shared.queue.connect`)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        settings: QueueSettings,
        *,
        image_stores: Sequence[ImageStore] = (),
        redirect: bool = True,
    ) -> None:
        self.redis = client
        self.settings = settings
        self.keys = settings.keys
        self.image_stores = list(image_stores) or [RedisImages(self.keys)]
        self.redirect = redirect
        self._served: dict[str, tuple[ModelInfo, float]] = {}
        """Model name -> (its registration, monotonic time until which it may be trusted): :meth:`model`."""

    # --- submit --------------------------------------------------------------------------------

    def check_budget(self, request: SamplingParams) -> None:
        """Raise :class:`OverBudget` now for a job the submit script would refuse (e.g. before planning it)."""
        if reason := over_budget(request, self.settings.max_job_megapixel_steps):
            raise OverBudget(reason)

    async def check_depth(self, model: str | None = None) -> None:
        """Raise :class:`QueueFull` now if ``model``'s queue is at its depth limit (e.g. before planning a
        job the submit script would refuse). Only a hint: the submit script checks again, atomically."""
        limit = self.settings.max_queue_depth
        stream = self.keys.stream_of(model)
        if limit is not None and (depth := int(await self.redis.xlen(stream))) >= limit:
            raise QueueFull(depth, limit, model or DEFAULT_MODEL)

    async def submit(
        self,
        request: RenderRequest,
        *,
        submitter: str,
        idempotency_key: str | None = None,
        webhook_url: str | None = None,
        quota: SubmitQuota | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> Submitted:
        """Admit and queue a job in ``submitter``'s name, atomically (budget, depth, idempotency, owner,
        the submitter's ``quota``): raises :class:`OverBudget`, :class:`QueueFull`, :class:`QuotaExceeded`
        or :class:`IdempotencyConflict`."""
        settings = self.settings
        return await submit(
            self.redis,
            request,
            prefix=settings.key_prefix,
            ttl_seconds=settings.job_ttl_seconds,
            # Scoped to the credential: a key can neither replay nor reveal another token's job.
            idempotency_key=idempotency_scope(submitter, idempotency_key) if idempotency_key is not None else None,
            webhook_url=webhook_url,
            max_queue_depth=settings.max_queue_depth,
            max_megapixel_steps=settings.max_job_megapixel_steps,
            submitter=submitter,
            quota=quota,
            durability=settings.durability,
            trace_context=trace_context,
        )

    async def usage(self, submitter: str) -> tuple[float, int]:
        """``submitter``'s megapixel-steps queued in the last hour and its jobs queued or running, as
        its quotas count them (only what a quota keeps: 0 for a submitter without that quota)."""
        now_ms = int(time.time() * 1000)
        members = await self.redis.zrangebyscore(self.keys.quota_work(submitter), now_ms - 3_600_000, "+inf")
        work = sum(float(text(m).partition(":")[0]) for m in members)
        active = 0
        for job_id in await self.redis.smembers(self.keys.quota_active(submitter)):
            status = await self.redis.hget(self.keys.job(text(job_id)), Rec.STATUS)
            active += status is not None and text(status) not in TERMINAL_STATUSES
        return work, active

    # --- read ----------------------------------------------------------------------------------

    async def find(self, job_id: str) -> JobRecord | None:
        # Ids that can't be ours are "not found" without touching Redis (and can't build odd keys).
        if not JOB_ID_PATTERN.match(job_id):
            return None
        raw = await self.redis.hgetall(self.keys.job(job_id))
        return JobRecord.decode(raw) if raw else None

    async def read(self, job_id: str) -> JobRecord:
        record = await self.find(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    async def wait(self, job_id: str, timeout: float) -> JobRecord | None:
        """The job once it has ended, or None if it is still going (or unknown) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        delay = 0.1
        while True:
            record = await self.find(job_id)
            if record is not None and record.status in TERMINAL_STATUSES:
                return record
            if time.monotonic() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(0.5, delay * 1.5)

    async def cancel(self, job_id: str) -> JobRecord:
        """Apply :func:`shared.queue.request_cancel` and return the record as it then stands."""
        await self.read(job_id)  # 404 (and the id check) before anything else
        await atransact(
            self.redis, self.keys, job_id, lambda pipe, record: request_cancel(pipe, self.keys, job_id, record)
        )
        return await self.read(job_id)

    # --- images --------------------------------------------------------------------------------

    def _store_of(self, record: JobRecord) -> ImageStore:
        for store in self.image_stores:
            if store.holds(record):
                return store
        raise ImageStoreUnavailable("this job's images are in an S3 image store this service is not configured for")

    async def image(self, record: JobRecord, index: int) -> bytes | ImageRedirect | None:
        """Image ``index`` of a succeeded job: where to fetch it (when the store links and ``redirect``
        is on), its bytes, or None once expired."""
        store = self._store_of(record)
        if self.redirect and (link := await store.link(record, index)) is not None:
            return link
        return await store.read(self.redis, record, index)

    async def image_bytes(self, record: JobRecord, index: int) -> bytes | None:
        """Image ``index``'s bytes, whatever store holds them (the OpenAI route's ``b64_json``)."""
        return await self._store_of(record).read(self.redis, record, index)

    # --- list ----------------------------------------------------------------------------------

    async def page(
        self, submitter: str, *, limit: int, cursor: str | None, status: JobStatus | None
    ) -> tuple[list[JobRecord], str | None]:
        """``submitter``'s jobs, newest first, from ``cursor`` on; and the cursor of the next page (None: no more)."""
        key = self.keys.owner_index(submitter)
        top, after_id = "+inf", None
        if cursor and (match := CURSOR_PATTERN.match(cursor)):
            top, after_id = match.group(1), match.group(2)
        items: list[JobRecord] = []
        scanned, offset, last = 0, 0, None
        while len(items) < limit and scanned < MAX_SCANNED:
            batch: list[Any] = await self.redis.zrevrangebyscore(
                key, top, "-inf", start=offset, num=MAX_PAGE, withscores=True
            )
            if not batch:
                return items, None
            offset += len(batch)
            # Equal scores come in reverse id order: skip up to and including the cursor's job.
            entries = [(text(m), int(s)) for m, s in batch]
            if after_id is not None:
                entries = [(m, s) for m, s in entries if not (str(s) == top and m >= after_id)]
            async with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in entries:
                    pipe.hgetall(self.keys.job(job_id))
                records = await pipe.execute()
            for (job_id, score), raw in zip(entries, records, strict=True):
                scanned += 1
                last = f"{score}:{job_id}"
                if raw:
                    record = JobRecord.decode(raw)
                    if status is None or record.status == status:
                        items.append(record)
                if len(items) >= limit or scanned >= MAX_SCANNED:
                    break
        return items, last  # stopped on a full page or the scan bound

    async def find_by_idempotency_key(self, submitter: str, idempotency_key: str) -> JobRecord | None:
        """``submitter``'s job submitted with this key, if any (the key maps to one job id)."""
        stored = await self.redis.get(self.keys.idempotency(idempotency_scope(submitter, idempotency_key)))
        if stored is None:
            return None
        job_id = text(stored).partition(":")[0]
        if await self.redis.zscore(self.keys.owner_index(submitter), job_id) is None:
            return None
        return await self.find(job_id)

    async def models(self) -> list[ModelInfo]:
        """The models workers serve (registered within their TTL): :func:`shared.queue.models.list_models`."""
        return await list_models(self.redis, self.keys)

    async def model(self, name: str) -> ModelInfo | None:
        """``name``'s registration if a worker registered it within its TTL, else None (``workers``
        not counted). What every submit asks: kept for :data:`MODEL_CACHE_SECONDS` but never past the
        registration's own expiry, else one round trip (:func:`shared.queue.models.find_model`)."""
        now = time.monotonic()
        cached = self._served.get(name)
        if cached is not None and now < cached[1]:
            return cached[0]
        info, left = await find_model(self.redis, self.keys, name)
        if info is None:
            self._served.pop(name, None)  # not kept: a worker registering it is seen by the next submit
        else:
            # Measured from before the read, so the entry ends no later than the registration does.
            self._served[name] = (info, now + min(MODEL_CACHE_SECONDS, left))
        return info

    async def queue_position(self, job_id: str, page: int = 100, *, model: str | None = None) -> int | None:
        """The job's 1-based place among the stream entries no worker has taken yet; None if not among them.

        Entries after the group's last-delivered id are the undelivered ones, in order. The queue
        is bounded (``max_queue_depth``), so reading it is bounded too.
        """
        keys = self.keys.for_model(model)  # the stream of the job's model
        try:
            groups = await self.redis.xinfo_groups(keys.stream)
        except ResponseError:
            groups = []  # no stream or no group yet: nothing has been delivered
        start = next((text(g["last-delivered-id"]) for g in groups if text(g["name"]) == keys.group), "0-0")
        place = 0
        while True:
            entries = stream_entries(await self.redis.xrange(keys.stream, min=f"({start}", max="+", count=page) or [])
            for entry_id, fields in entries:
                place += 1
                start = entry_id
                try:
                    if json.loads(decode_hash(fields)[MESSAGE_FIELD]).get("job_id") == job_id:
                        return place
                except (KeyError, ValueError, AttributeError):
                    continue  # a malformed entry still holds a place: a worker will meet it
            if len(entries) < page:
                return None

    # --- events --------------------------------------------------------------------------------

    async def history(self, job_id: str, after: str) -> list[tuple[str, JobEvent]]:
        """Up to ``EVENTS_PER_READ`` of the job's events after ``after``, without waiting."""
        answer = await self.redis.xread({self.keys.events(job_id): after}, count=EVENTS_PER_READ)
        return [(entry_id, _event(fields)) for entry_id, fields in read_entries(answer)]

    async def has_ended(self, job_id: str) -> bool:
        """Terminal or expired. (A terminal status and its event are written in one transaction.)"""
        status = await self.redis.hget(self.keys.job(job_id), Rec.STATUS)
        return status is None or text(status) in TERMINAL_STATUSES

    async def follow(
        self, reader: redis.asyncio.Redis, cursors: Mapping[str, str], block_ms: int
    ) -> dict[str, list[tuple[str, dict[str, str]]]]:
        """One blocking read of many jobs' events on ``reader`` (a connection of its own): job id -> the
        entries after its cursor (only jobs with some), each parsed later by :meth:`event_of`, so a bad
        entry fails the one stream that reads it, not the reader."""
        by_key = {self.keys.events(job_id): job_id for job_id in cursors}
        streams: dict[Any, Any] = {self.keys.events(job_id): cursor for job_id, cursor in cursors.items()}
        answer: Any = await reader.xread(streams, count=EVENTS_PER_READ, block=block_ms)
        return {
            by_key[text(raw_key)]: [(entry_id, decode_hash(fields)) for entry_id, fields in stream_entries(entries)]
            for raw_key, entries in answer or []
        }

    @staticmethod
    def event_of(fields: Mapping[Any, Any]) -> JobEvent:
        """The event an entry of :meth:`follow` holds; raises ``ValueError`` if it is malformed."""
        return _event(fields)


class SyncRenderQueue:
    """The worker's face: the same keys and transitions over a blocking client.

    With ``durability.replicas``, transitions run on ``writer``, a client of one connection, under a
    lock, and each is followed by ``WAIT`` on that connection (:mod:`shared.queue.durability`).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: QueueKeys,
        *,
        durability: Durability = Durability(),
        writer: redis.Redis | None = None,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.durability = durability
        if durability.replicas and writer is None:
            raise ValueError("waiting for replicas needs a one-connection writer client")
        self.writer = writer or client
        self._writing = threading.Lock()

    def transact(self, job_id: str, build: Callable[[Any, dict[str, str]], T]) -> T:
        """Run a transition builder as one fenced transaction (:func:`shared.queue.transitions.transact`).

        Retrying it after a connection error is safe: each transition recognises its own earlier,
        applied run (same owner token) and buffers nothing the second time.
        """
        if not self.durability.replicas:
            return transact(self.redis, self.keys, job_id, build)
        with self._writing:
            result = transact(self.writer, self.keys, job_id, build)
            self.durability.check(self.writer.execute_command("WAIT", *self.durability))
        return result

    def find(self, job_id: str, client: redis.Redis | None = None) -> JobRecord | None:
        raw = (client or self.redis).hgetall(self.keys.job(job_id))
        return JobRecord.decode(raw) if raw else None

    def stop_reason(self, job_id: str, token: str, client: redis.Redis | None = None) -> str | None:
        """Why the delivery ``token`` should stop rendering: ``canceled``, ``superseded`` (another worker
        reclaimed the job), or None. One round trip: it runs every ``CANCEL_POLL_SECONDS``."""
        flag, lease = (client or self.redis).hmget(self.keys.job(job_id), [Rec.CANCEL_REQUESTED, Rec.OWNER])
        if flag is not None and text(flag) == "1":
            return "canceled"
        if lease is not None and text(lease) != token:
            return "superseded"
        return None
