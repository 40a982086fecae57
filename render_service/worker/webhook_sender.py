"""Webhook deliveries, at least once: every worker takes due deliveries from ``{p}webhooks`` (queued by
the transition that ended the job, in the same transaction) through the consumer group
``webhook-senders``, POSTs, and acks the entry only once the delivery is over.

* **One attempt per claim.** A delivery is read (``XREADGROUP``) or claimed (``XCLAIM``) for one
  POST; Redis counts the claims (the entry's delivery count), which is the attempt number.
* **Retries outlive the worker.** After an attempt that may succeed later (no answer, 429, 5xx) the
  entry stays pending; any worker claims it again once it has been idle for the backoff of its
  attempt (``webhook_retry_seconds``, doubling, at most ``webhook_retry_max_seconds``, and never
  before 3 x the POST timeout, so a live worker's attempt is over first). A worker SIGKILLed mid-POST
  leaves its entry pending the same way.
* **The same id on every attempt.** Each POST carries ``Webhook-Id: {job_id}.{status}``; receivers
  drop repeats (at least once means a receiver may see one twice, e.g. when a worker dies between
  the receiver's 2xx and the ack).
* **Outcomes on the job.** Each attempt writes ``webhook_status`` and ``webhook_attempts`` on the
  record; a delivered, rejected or refused delivery, or one out of attempts, is acked in that write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import httpx
import redis
from redis.exceptions import ResponseError

from render_service.metrics import count_webhook
from render_service.settings import RenderSettings
from render_service.webhooks import Attempt, headers_for, post_once
from render_service.worker.retry import REDIS_ERRORS
from shared.queue import (
    JOB_ID_PATTERN,
    SyncRenderQueue,
    render_job,
    stream_entries,
    text,
    webhook_attempted,
)
from shared.queue.keys import WEBHOOK_GROUP
from shared.queue.wire import decode_hash, read_entries

log = logging.getLogger("render_service.worker")

READ_BLOCK_MS = 1000
STOP_WAIT_SECONDS = 2.0
SCAN_COUNT = 50


class WebhookSender:
    """One worker's sender: a thread that reads new deliveries and claims due retries."""

    def __init__(self, settings: RenderSettings, name: str, client: redis.Redis) -> None:
        """``client`` is the sender's own (its socket timeout must outlast a blocking read of 1 s)."""
        self.settings = settings
        self.name = name
        self.keys = settings.keys
        self.redis = client
        self.queue = SyncRenderQueue(client, self.keys)
        self._exit = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
        self._http = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop taking deliveries. An attempt still in flight after a moment is left to die with the
        process (a daemon thread): its entry stays pending and another worker makes the attempt again,
        so a slow receiver never holds a stopping worker past its termination grace."""
        self._exit.set()
        if self._thread.is_alive():
            self._thread.join(timeout=STOP_WAIT_SECONDS)
        if not self._thread.is_alive():
            self._http.close()

    def retry_delay(self, attempts: int) -> float:
        """Seconds a delivery that had ``attempts`` POSTs waits (idle) before the next one."""
        settings = self.settings
        backoff = min(settings.webhook_retry_seconds * 2 ** max(0, attempts - 1), settings.webhook_retry_max_seconds)
        return float(max(backoff, 3 * settings.webhook_timeout_seconds))

    # --- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._exit.is_set():
            try:
                self.ensure_group()
                while not self._exit.is_set():
                    due = self._claim_due()
                    for entry_id, fields, attempts in due or self._read_new():
                        self.attempt(entry_id, fields, attempts)
            except REDIS_ERRORS as exc:
                log.warning("webhook sender: redis unavailable", extra={"fields": {"error": repr(exc)}})
                self._exit.wait(1.0)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):  # a Redis without persistence restarted: recreate the group
                    log.exception("webhook sender failed")
                    self._exit.wait(1.0)
            except Exception:
                log.exception("webhook sender failed")
                self._exit.wait(1.0)

    def ensure_group(self) -> None:
        try:
            self.redis.xgroup_create(self.keys.webhooks, WEBHOOK_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_new(self) -> list[tuple[str, Mapping[Any, Any], int]]:
        answer = self.redis.xreadgroup(
            WEBHOOK_GROUP, self.name, {self.keys.webhooks: ">"}, count=SCAN_COUNT, block=READ_BLOCK_MS
        )
        return [(entry_id, fields, 1) for entry_id, fields in read_entries(answer)]

    def _claim_due(self) -> list[tuple[str, Mapping[Any, Any], int]]:
        """Pending deliveries idle past the backoff of their last attempt, claimed for one more."""
        keys, due = self.keys, []
        first = int(self.retry_delay(1) * 1000)
        pending = self.redis.xpending_range(
            keys.webhooks, WEBHOOK_GROUP, min="-", max="+", count=SCAN_COUNT, idle=first
        )
        for item in pending:
            entry_id, attempts = text(item["message_id"]), int(item["times_delivered"])
            wait_ms = int(self.retry_delay(attempts) * 1000)
            if int(item["time_since_delivered"]) < wait_ms:
                continue
            # min_idle_time makes the claim atomic: of two workers claiming at once, one gets it.
            claimed = self.redis.xclaim(
                keys.webhooks, WEBHOOK_GROUP, self.name, min_idle_time=wait_ms, message_ids=[entry_id]
            )
            for claimed_id, fields in stream_entries(claimed):
                if fields:
                    due.append((claimed_id, fields, attempts + 1))
                else:  # deleted meanwhile: nothing to send
                    self.redis.xack(keys.webhooks, WEBHOOK_GROUP, claimed_id)
        return due

    # --- one attempt ---------------------------------------------------------------------------

    def attempt(self, entry_id: str, raw: Mapping[Any, Any], attempts: int) -> None:
        """POST once; write the outcome on the record and, if the delivery is over, ack it, together."""
        fields = decode_hash(raw)
        job_id, delivery_id = fields.get("job_id", ""), fields.get("delivery_id", "")
        record = self.queue.find(job_id) if JOB_ID_PATTERN.match(job_id) else None
        if record is None or not record.webhook_url:
            self._ack(entry_id)  # the job expired (or never had a webhook): nothing to deliver
            return
        settings = self.settings
        body = render_job(record, settings.public_url).model_dump_json(by_alias=True).encode()
        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        event = fields.get("event") or f"render.{record.status}"
        headers = headers_for(body, event=event, delivery_id=delivery_id or None, secret=secret)
        result = post_once(self._http, record.webhook_url, body, headers, allow_private=settings.allow_private_webhooks)
        over = result.kind != "retry" or attempts >= settings.webhook_max_attempts
        outcome = self._describe(result, attempts)
        self._record(job_id, entry_id, outcome, attempts, over)
        log.info(
            "webhook attempt",
            extra={"fields": {"job": job_id, "delivery": delivery_id, "attempt": attempts, "outcome": outcome}},
        )

    def _describe(self, result: Attempt, attempts: int) -> str:
        if result.kind == "delivered":
            return f"delivered: {result.detail} after {attempts} attempt(s)"
        if result.kind == "rejected":
            return f"rejected: {result.detail}"
        if result.kind == "refused":
            return result.detail
        if attempts >= self.settings.webhook_max_attempts:
            return f"failed after {attempts} attempts: {result.detail}"
        return f"retrying: {result.detail} (attempt {attempts} of {self.settings.webhook_max_attempts})"

    def _record(self, job_id: str, entry_id: str, outcome: str, attempts: int, over: bool) -> None:
        keys = self.keys

        def build(pipe: Any, record: dict[str, str]) -> None:
            webhook_attempted(
                pipe, keys, record, job_id=job_id, entry_id=entry_id, outcome=outcome, attempts=attempts, over=over
            )
            if over:
                count_webhook(pipe, keys, outcome)

        self.queue.transact(job_id, build)

    def _ack(self, entry_id: str) -> None:
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xack(self.keys.webhooks, WEBHOOK_GROUP, entry_id)
            pipe.xdel(self.keys.webhooks, entry_id)
            pipe.execute()
