"""The worker's heartbeat: proof of life for its current job."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from render_service.worker.retry import REDIS_ERRORS
from shared.models import ModelInfo
from shared.queue import QueueKeys, text
from shared.queue.models import SERVES_FIELD, register_model

log = logging.getLogger("render_service.worker")

FORGET_AFTER_SECONDS = 600.0


class Heartbeat:
    """Every ``interval`` seconds, on its own thread and its own fail-fast connection:

    * ``ZADD {p}workers`` and the ``{p}worker:{name}`` hash, which names the entries this worker
      holds (``holding()``: (job id, entry id) of the jobs it renders, comma-separated when it
      renders a batch) and its claim deadline, so another worker (whatever *its* settings) can tell
      that an entry's owner is alive and must not reclaim it;
    * ``XCLAIM ... JUSTID`` of those entries, which resets their idle time without counting a delivery;
    * calls ``on_beat`` (the worker hands it expired images to delete, on another thread);
    * registers the model it serves (``{p}models``, ``{p}model:{name}``; :mod:`shared.queue.models`).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: QueueKeys,
        name: str,
        *,
        interval: float,
        claim_idle_seconds: float,
        info: dict[str, str],
        holding: Callable[[], list[tuple[str, str]]],
        on_beat: Callable[[], None] | None = None,
        model: ModelInfo | None = None,
        model_ttl_seconds: int = 3600,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.name = name
        self.interval = interval
        self.claim_idle_seconds = claim_idle_seconds
        self.info = info
        self.holding = holding
        self.on_beat = on_beat
        self.model = model
        """What this worker serves: registered with every beat (``GET /v1/models``, the submit check)."""
        self.model_ttl_seconds = model_ttl_seconds
        self._exit = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and unregister, so the worker leaves the live list at once."""
        self._exit.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.redis.zrem(self.keys.workers, self.name)
            self.redis.delete(self.keys.worker(self.name))
        except REDIS_ERRORS:
            pass

    def publish(self) -> None:
        """One beat now (the worker calls it right after taking a job, so its claim is visible at once)."""
        keys = self.keys
        held = self.holding()
        now = time.time()
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.workers, {self.name: now})
            # Forget workers long silent (they died without unregistering). Not by our own interval:
            # other workers may beat much less often than we do.
            pipe.zremrangebyscore(keys.workers, 0, now - max(10 * self.interval, FORGET_AFTER_SECONDS))
            fields: dict[Any, Any] = {
                **self.info,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "job": ",".join(job_id for job_id, _ in held),
                "entry": ",".join(entry_id for _, entry_id in held),
                "claim_idle_seconds": repr(self.claim_idle_seconds),
                "beat_at": repr(now),
            }
            if self.model is not None:
                fields[SERVES_FIELD] = self.model.name
                register_model(pipe, keys, self.model, self.model_ttl_seconds)
            pipe.hset(keys.worker(self.name), mapping=fields)
            pipe.expire(keys.worker(self.name), max(1, int(3 * self.interval) + 1))
            pipe.execute()
        for _, entry_id in held:
            self._touch(entry_id)

    def _loop(self) -> None:
        while not self._exit.is_set():
            try:
                self.publish()
                if self.on_beat is not None:
                    self.on_beat()
            except REDIS_ERRORS as exc:
                log.warning("heartbeat failed", extra={"fields": {"worker": self.name, "error": repr(exc)}})
            except Exception:
                log.exception("heartbeat crashed")
            self._exit.wait(self.interval)

    def _touch(self, entry_id: str) -> None:
        """Reset the idle time of our pending entry so no other worker reclaims it."""
        keys = self.keys
        try:
            pending = self.redis.xpending_range(keys.stream, keys.group, min=entry_id, max=entry_id, count=1)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost its data (no persistence, or a failover to an empty node): the entry is gone
            # with the group, so there is nothing to keep claimed. The worker's next read makes the group.
            log.warning("job stream's group is gone", extra={"fields": {"worker": self.name, "entry": entry_id}})
            return
        # Only re-claim what is still ours: XCLAIM with min-idle 0 would otherwise steal it back.
        if pending and text(pending[0]["consumer"]) == self.name:
            self.redis.xclaim(keys.stream, keys.group, self.name, min_idle_time=0, message_ids=[entry_id], justid=True)


def owner_is_alive(client: redis.Redis, keys: QueueKeys, consumer: str, entry_id: str) -> bool:
    """Whether ``consumer`` is beating for ``entry_id`` within the claim deadline *it* published."""
    entries, deadline, beat_at = client.hmget(keys.worker(consumer), ["entry", "claim_idle_seconds", "beat_at"])
    if entries is None or deadline is None or beat_at is None or entry_id not in text(entries).split(","):
        return False
    return time.time() - float(text(beat_at)) < float(text(deadline))
