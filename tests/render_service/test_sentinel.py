"""Redis behind Sentinel, its primary SIGKILLed with jobs in flight: a primary, a replica and three
``redis-server --sentinel`` processes, the render API and two workers as real processes.

Every accepted job ends ``succeeded``, no status goes back from a terminal one, and submits during
the failover answer 202 or 503 with ``Retry-After``, never a 500. Submits and transitions wait for one
replica (``OMOST_REDIS_WAIT_REPLICAS=1``), so what was acknowledged is on the replica that Sentinel
promotes. Sentinel declares the primary down after 1 s, so the failover takes a few seconds.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.render_service.helpers import TERMINAL, Stack, body, render_stack, submit, unique_prefix, wait_for
from tests.support import SentinelCluster

# Real worker processes and six Redis processes: tens of seconds.
pytestmark = pytest.mark.slow

SETTINGS = {
    # Longer than the failover, so no held job is taken from a worker that merely lost Redis for a while.
    "claim_idle_seconds": 8,
    "heartbeat_seconds": 0.5,
    "block_seconds": 0.5,
    "OMOST_REDIS_WAIT_REPLICAS": 1,
    "OMOST_REDIS_WAIT_TIMEOUT_MS": 1000,
}


@pytest.fixture(scope="module")
def env(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, SentinelCluster]]:
    logs = tmp_path_factory.mktemp("sentinel-logs")
    cluster = SentinelCluster(down_after_ms=1000).start()
    try:
        workers = {name: SETTINGS for name in ("sentinel-w1", "sentinel-w2")}
        with render_stack(cluster.url, unique_prefix("sentinel"), tiny_model, logs, workers, SETTINGS) as stack:
            yield stack, cluster
    finally:
        cluster.stop()


class Watcher:
    """Submits and reads jobs in a loop on its own thread; keeps every answer's status code and every
    job status it saw, in order."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=30)
        self.accepted: list[str] = []
        self.answers: list[tuple[int, dict[str, str], str]] = []
        self.seen: dict[str, list[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(60)
        self.http.close()

    def watch(self, job_id: str) -> None:
        self.seen.setdefault(job_id, [])

    def _loop(self) -> None:
        n = 0
        while not self._stop.wait(0.2):
            n += 1
            try:
                answer = self.http.post("/v1/renders", json=body(seed=1000 + n))
                self.answers.append((answer.status_code, dict(answer.headers), answer.text[:300]))
                if answer.status_code == 202:
                    self.accepted.append(answer.json()["id"])
                    self.watch(answer.json()["id"])
                for job_id in list(self.seen):
                    got = self.http.get(f"/v1/renders/{job_id}")
                    self.answers.append((got.status_code, dict(got.headers), got.text[:300]))
                    if got.status_code == 200:
                        self.seen[job_id].append(got.json()["status"])
            except httpx.TransportError as exc:  # the API itself stays up: a transport error is a failure
                self.answers.append((0, {}, repr(exc)))


def flips(statuses: list[str]) -> list[str]:
    """The statuses seen after a terminal one that differ from it."""
    ends = [i for i, status in enumerate(statuses) if status in TERMINAL]
    return [s for s in statuses[ends[0] :] if s != statuses[ends[0]]] if ends else []


def test_jobs_in_flight_survive_a_sentinel_failover(env: tuple[Stack, SentinelCluster]) -> None:
    stack, cluster = env
    http, gate = stack.http, stack.gate
    with Watcher(stack.api.url) as watcher, gate.holding_all():
        held = [submit(http, steps=3, seed=n) for n in range(2)]  # one on each worker, held mid-render
        queued = [submit(http, seed=10 + n) for n in range(2)]
        for job_id in [*held, *queued]:
            watcher.watch(job_id)
        for job_id in held:
            wait_for(http, job_id, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "held")

        old = cluster.kill_primary()
        started = time.monotonic()
        new = cluster.wait_failover(old)
        failover_seconds = time.monotonic() - started
        cluster.restart_node(old)  # as the deployment would: it comes back empty, as the new primary's replica
        time.sleep(1.0)
    # The hold is over: the held jobs finish, the queued ones and those submitted meanwhile run.
    after = [submit(http, seed=20 + n) for n in range(2)]
    ids = [*held, *queued, *watcher.accepted, *after]
    records = {job_id: wait_for(http, job_id, lambda r: r["status"] in TERMINAL, 240, "the end") for job_id in ids}

    assert new != old
    bad = [(code, text) for code, _, text in watcher.answers if code not in (200, 202, 503)]
    assert not bad, f"answers other than 200/202/503 during the failover: {bad[:5]}"
    no_retry_after = [text for code, headers, text in watcher.answers if code == 503 and "retry-after" not in headers]
    assert not no_retry_after, no_retry_after[:3]
    failed = {job_id: r["error"] for job_id, r in records.items() if r["status"] != "succeeded"}
    assert not failed, failed
    flipped = {job_id: flips(seen) for job_id, seen in watcher.seen.items() if flips(seen)}
    assert not flipped, flipped
    for job_id in ids:  # the history too: one terminal event, the last
        events = [json.loads(f[b"event"]) for _, f in stack.redis.xrange(stack.keys.events(job_id))]
        statuses = [e["status"] for e in events if e["type"] == "status"]
        assert statuses[-1] == "succeeded" and sum(s in TERMINAL for s in statuses) == 1, (job_id, statuses)
    # The event hub reads through the Sentinels too (its own single connection): a finished job's stream.
    with http.stream("GET", f"/v1/renders/{held[0]}/events", timeout=30) as events:
        assert events.status_code == 200 and "succeeded" in events.read().decode()
    codes = [code for code, _, _ in watcher.answers]
    print(f"failover {failover_seconds:.1f} s; answers {dict((c, codes.count(c)) for c in set(codes))}")
