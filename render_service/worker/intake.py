"""Taking jobs from the stream: new entries, abandoned ones (reclaimed from workers that stopped
beating), the queued jobs that can join a batch, and the claim that makes each one this worker's."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from redis.exceptions import ResponseError

from render_service.engine.batching import batch_key
from render_service.settings import RenderSettings
from render_service.worker.heartbeat import owner_is_alive
from render_service.worker.rendering import RunningJob
from render_service.worker.retry import REDIS_ERRORS, RetryPolicy
from shared.jobs import RenderRequest
from shared.queue import (
    Delivery,
    SyncRenderQueue,
    claim,
    dead_letter,
    decode_message,
    read_entries,
    stream_entries,
    text,
)

log = logging.getLogger("render_service.worker")

Entry = tuple[str, Mapping[Any, Any]]
"""A stream entry as read: its id and its fields."""


class Intake:
    """Reads the job stream for one worker and claims what it reads."""

    def __init__(
        self,
        settings: RenderSettings,
        name: str,
        queue: SyncRenderQueue,
        retry: RetryPolicy,
        *,
        stopping: Callable[[], bool],
        on_claimed: Callable[[], None],
    ) -> None:
        self.settings = settings
        self.name = name
        self.keys = settings.keys
        self.queue = queue
        self.redis = queue.redis
        self.retry = retry
        self.stopping = stopping
        self.on_claimed = on_claimed
        """Called when a job joins a batch being filled (the heartbeat publishes it at once)."""
        self.held: Entry | None = None
        """An entry read while filling a batch that could not join it: this worker's next job."""

    def held_job(self) -> tuple[str, str] | None:
        """(job id, entry id) of the held entry (its job id may be unknown: a malformed message is
        dead-lettered when its turn comes)."""
        if self.held is None:
            return None
        try:
            job_id = decode_message(self.held[1]).job_id
        except ValueError:
            job_id = ""
        return job_id, self.held[0]

    def ensure_group(self) -> None:
        try:
            # id 0: a fresh group also delivers entries enqueued before any worker existed.
            self.redis.xgroup_create(self.keys.stream, self.keys.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    @contextlib.contextmanager
    def _group_may_vanish(self) -> Iterator[None]:
        """A Redis without persistence that restarted has no stream: recreate it, and read again later."""
        try:
            yield
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()

    def take(self) -> Entry | None:
        """The next stream entry for this worker: an abandoned one first (it is older), else a new one."""
        with self._group_may_vanish():
            reclaimed = self._reclaim()
            if reclaimed is not None or self.stopping():
                return reclaimed
            return self._read_new(block_seconds=self.settings.block_seconds)
        return None

    def _read_new(self, block_seconds: float | None) -> Entry | None:
        """The next never-delivered entry; waits up to ``block_seconds`` for one (None: answers at once)."""
        keys = self.keys
        block = None if block_seconds is None else int(block_seconds * 1000)
        with self._group_may_vanish():
            answer = self.redis.xreadgroup(keys.group, self.name, {keys.stream: ">"}, count=1, block=block)
            for entry_id, fields in read_entries(answer):
                return entry_id, fields
        return None

    def fill(self, batch: list[RunningJob]) -> None:
        """Claim the next queued jobs while they can join the first one's UNet batch.

        Only jobs already waiting join (no wait for more), in stream order: the first entry that
        cannot join is held as this worker's next job, so no job is overtaken by a later one.
        """
        limit, first = self.settings.batch_max_images, batch[0].delivery.message.request
        if limit <= 1 or first.width * first.height > self.settings.batch_max_pixels:
            return
        key, images = batch_key(first), first.num_images
        while images < limit and not self.stopping():
            try:
                entry = self._read_new(block_seconds=None)
            except REDIS_ERRORS:
                return  # an outage: render what is claimed; the stream is read again after it
            if entry is None:
                return
            request: RenderRequest | None
            try:
                request = decode_message(entry[1]).request
            except ValueError:
                request = None  # claim dead-letters it when its turn comes
            if request is None or batch_key(request) != key or images + request.num_images > limit:
                self.held = entry
                return
            running = self.claim(*entry)
            if running is not None:
                batch.append(running)
                images += request.num_images
                self.on_claimed()

    def _reclaim(self) -> Entry | None:
        """XCLAIM a pending entry idle past our deadline whose owner no longer beats for it."""
        keys = self.keys
        min_idle = int(self.settings.claim_idle_seconds * 1000)
        for pending in self.redis.xpending_range(keys.stream, keys.group, min="-", max="+", count=100, idle=min_idle):
            entry_id, consumer = text(pending["message_id"]), text(pending["consumer"])
            if owner_is_alive(self.redis, keys, consumer, entry_id):
                continue  # its owner beats slower than our deadline, but it beats: not abandoned
            claimed = self.redis.xclaim(
                keys.stream, keys.group, self.name, min_idle_time=min_idle, message_ids=[entry_id]
            )
            for claimed_id, fields in stream_entries(claimed):
                if fields:
                    log.info("reclaimed an abandoned job", extra={"fields": {"worker": self.name, "entry": entry_id}})
                    return claimed_id, fields
            # Deleted from the stream meanwhile (Redis 6.2 answers nil fields): nothing to run.
            self.redis.xack(keys.stream, keys.group, entry_id)
        return None

    def claim(self, entry_id: str, fields: Mapping[Any, Any]) -> RunningJob | None:
        """Apply :func:`shared.queue.claim`; None when there is nothing to render."""
        keys = self.keys
        try:
            message = decode_message(fields)
        except ValueError as exc:
            reason = f"malformed message: {exc}"
            log.error("malformed queue message", extra={"fields": {"entry": entry_id, "error": str(exc)}})

            def write() -> None:
                with self.redis.pipeline(transaction=True) as pipe:
                    dead_letter(pipe, keys, entry_id, fields, reason)
                    pipe.execute()

            self.retry(write, "dead-letter")
            return None
        token = f"{self.name}/{secrets.token_hex(4)}"

        def build(pipe: Any, record: dict[str, str]) -> Any:
            return claim(
                pipe,
                keys,
                record,
                entry_id=entry_id,
                message=message,
                worker=self.name,
                token=token,
                max_deliveries=self.settings.max_deliveries,
            )

        decision = self.retry(lambda: self.queue.transact(message.job_id, build), "start job")
        if decision.settled is not None:
            fields = {"job": message.job_id, "status": decision.settled}
            log.info("job settled without rendering", extra={"fields": fields})
            return None
        log.info("job started", extra={"fields": {"job": message.job_id, "deliveries": decision.deliveries}})
        return RunningJob(Delivery(entry_id, message, token, decision.deliveries))
