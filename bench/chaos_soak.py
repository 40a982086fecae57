"""Chaos soak: N tiny-model jobs through the render API and 3 workers on a Sentinel-backed Redis, while a
random worker is SIGKILLed every few seconds (and started again, as an orchestrator would), the Redis
primary is SIGKILLed (Sentinel fails over; the old node comes back as a replica) twice, and an API
replica is restarted. Every job carries a webhook to a local receiver that answers 503 now and then.

At the end it prints accepted / succeeded / failed / lost / stuck, terminal status flips, answers
other than 2xx/503+Retry-After, duplicate and missing webhook deliveries, p50/p99 submit→done, and
Redis memory before/after. Goal: 0 lost, 0 stuck, 0 flips, 0 5xx. A short version runs in the test
suite (``tests/render_service/test_chaos_soak.py``); figures of a long run are in docs/reliability.md.

    python bench/chaos_soak.py --jobs 1000 --submit-seconds 420

Real processes throughout: redis-server (2 nodes + 3 ``--sentinel``), ``python -m render_service``
(2 replicas), ``python -m render_service.worker`` (the tiny random-weight model unless ``--model``).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shared.queue import QueueKeys  # noqa: E402 - needs the repo root on sys.path first
from shared.queue.connect import sync_client  # noqa: E402
from tests.render_service.helpers import Api, body, start_worker  # noqa: E402
from tests.support import ChildProcess, SentinelCluster  # noqa: E402

TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class SoakConfig:
    jobs: int = 1000
    workers: int = 3
    submit_seconds: float = 420.0
    """Submissions are spread evenly over this long; the chaos happens meanwhile."""
    kill_every: float = 8.0
    """Seconds between two worker SIGKILLs (a random ready worker, while at least two are ready)."""
    failovers: int = 2
    api_restarts: int = 1
    drain_seconds: float = 600.0
    steps: int = 2
    webhook_failure_rate: float = 0.05
    max_deliveries: int = 10
    """A job killed with its worker this many times fails: generous, the soak kills on purpose."""
    model: Path | None = None
    log_dir: Path | None = None
    seed: int = 1


@dataclass
class SoakReport:
    accepted: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    flips: dict[str, list[str]] = field(default_factory=dict)
    bad_answers: list[str] = field(default_factory=list)
    """Answers other than 2xx, 503/429 with Retry-After: 5xx above all."""
    answers: Counter[int] = field(default_factory=Counter)
    transport_errors: int = 0
    """Requests that found no API listening (the one being restarted): retried on the other replica."""
    duplicate_webhooks: int = 0
    missing_webhooks: list[str] = field(default_factory=list)
    submit_to_done: list[float] = field(default_factory=list)
    worker_kills: int = 0
    failover_seconds: list[float] = field(default_factory=list)
    api_restarts: int = 0
    memory_before: int = 0
    memory_after: int = 0
    keys_before: int = 0
    keys_after: int = 0
    leftover: dict[str, int] = field(default_factory=dict)
    """Entries left at the end in the job stream and the webhook stream (both 0 when all is settled)."""
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    errors: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        done = sorted(self.submit_to_done)

        def pct(p: float) -> str:
            return f"{done[min(len(done) - 1, int(p * len(done)))]:.1f} s" if done else "-"

        return [
            f"accepted {self.accepted}   succeeded {self.succeeded}   failed {self.failed}   "
            f"canceled {self.canceled}   lost {len(self.lost)}   stuck {len(self.stuck)}",
            f"terminal status flips {len(self.flips)}   answers other than 2xx/503/429+Retry-After "
            f"{len(self.bad_answers)}   answers {dict(sorted(self.answers.items()))}   "
            f"no API listening (retried elsewhere) {self.transport_errors}",
            f"webhooks: duplicate deliveries {self.duplicate_webhooks}   missing {len(self.missing_webhooks)}",
            f"submit->done p50 {pct(0.5)}   p99 {pct(0.99)}   max {done[-1] if done else 0:.1f} s",
            f"chaos: {self.worker_kills} worker SIGKILLs, {len(self.failover_seconds)} primary SIGKILLs "
            f"(failover {', '.join(f'{s:.1f}' for s in self.failover_seconds)} s), {self.api_restarts} API restarts",
            f"redis used_memory {self.memory_before / 1e6:.2f} MB -> {self.memory_after / 1e6:.2f} MB; "
            f"keys {self.keys_before} -> {self.keys_after}; left in the streams {self.leftover}",
            f"{self.seconds:.0f} s; load average (1 min) {self.load[0]:.1f} at start, {self.load[1]:.1f} at the end "
            f"on {os.cpu_count()} cores",
        ]


class WebhookReceiver:
    """Counts the 2xx-answered deliveries per ``Webhook-Id``; answers 503 to a share of the POSTs."""

    def __init__(self, failure_rate: float, rng: random.Random) -> None:
        self.delivered: Counter[str] = Counter()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    fail = rng.random() < failure_rate
                    if not fail:
                        receiver.delivered[self.headers.get("Webhook-Id", "?")] += 1
                self.send_response(503 if fail else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


class Soak:
    def __init__(self, config: SoakConfig, cluster: SentinelCluster, model: Path, log_dir: Path) -> None:
        self.config = config
        self.cluster = cluster
        self.model = model
        self.log_dir = log_dir
        self.rng = random.Random(config.seed)
        self.prefix = f"soak-{self.rng.getrandbits(32):08x}:"
        self.keys = QueueKeys(self.prefix)
        self.redis = sync_client(cluster.url, socket_timeout=5)
        self.report = SoakReport()
        self.receiver = WebhookReceiver(config.webhook_failure_rate, self.rng)
        env = {"OMOST_REDIS_WAIT_REPLICAS": 1, "OMOST_REDIS_WAIT_TIMEOUT_MS": 1000}
        self.api_settings = {**env, "allow_private_webhooks": "true", "retry_after_seconds": 1, "log_level": "WARNING"}
        self.worker_settings = {
            **env,
            "allow_private_webhooks": "true",
            "claim_idle_seconds": 3,
            "heartbeat_seconds": 0.5,
            "block_seconds": 0.5,
            "max_deliveries": config.max_deliveries,
            "webhook_timeout_seconds": 1,
            "webhook_retry_seconds": 0.5,
            "log_level": "WARNING",
        }
        self.apis = [Api(cluster.url, self.prefix, log_dir, **self.api_settings) for _ in range(2)]
        self.workers: dict[str, ChildProcess] = {}
        self._names = itertools.count(1)
        self.submitted_at: dict[str, float] = {}
        self.seen: dict[str, str] = {}
        self._lock = threading.Lock()
        self._submitting = threading.Event()

    # --- processes -----------------------------------------------------------------------------

    def start_worker(self) -> str:
        name = f"soak-w{next(self._names)}"
        self.workers[name] = start_worker(
            self.cluster.url, self.prefix, self.model, self.log_dir, name, **self.worker_settings
        )
        return name

    def ready_workers(self) -> list[str]:
        names = [n for n, w in self.workers.items() if w.process is not None and w.process.poll() is None]
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.exists(self.keys.worker(name))
                alive = pipe.execute()
        except Exception:
            return []
        return [name for name, up in zip(names, alive, strict=True) if up]

    def stop(self) -> None:
        for api in self.apis:
            api.stop()
        for worker in self.workers.values():
            worker.stop()
        self.receiver.stop()

    # --- submitting ----------------------------------------------------------------------------

    def _post(self, index: int) -> None:
        headers = {"Idempotency-Key": f"soak-{index}"}
        payload = body(seed=index, steps=self.config.steps, webhook_url=self.receiver.url)
        apis = itertools.cycle(self.apis[index % 2 :] + self.apis[: index % 2])
        for _ in range(2000):
            api = next(apis)
            try:
                answer = httpx.post(f"{api.url}/v1/renders", json=payload, headers=headers, timeout=60)
            except httpx.TransportError:
                with self._lock:
                    self.report.transport_errors += 1
                time.sleep(0.2)
                continue
            with self._lock:
                self.report.answers[answer.status_code] += 1
            if answer.status_code == 202:
                with self._lock:
                    self.submitted_at.setdefault(answer.json()["id"], time.time())
                return
            retry_after = answer.headers.get("Retry-After")
            if answer.status_code in (429, 503) and retry_after:
                time.sleep(min(1.0, float(retry_after)))
                continue
            with self._lock:
                self.report.bad_answers.append(f"{answer.status_code}: {answer.text[:200]}")
            return
        with self._lock:
            self.report.errors.append(f"job {index}: never accepted")

    def _submitter(self, indices: Any, start: float) -> None:
        spacing = self.config.submit_seconds / max(1, self.config.jobs)
        for index in indices:
            time.sleep(max(0.0, start + index * spacing - time.monotonic()))
            self._post(index)

    # --- watching ------------------------------------------------------------------------------

    def _watch_once(self) -> None:
        with self._lock:
            ids = list(self.submitted_at)
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id in ids:
                    pipe.hget(self.keys.job(job_id), "status")
                statuses = pipe.execute()
        except Exception:
            return  # Redis failing over: look again next round
        for job_id, raw in zip(ids, statuses, strict=True):
            status = raw.decode() if raw is not None else "missing"
            before = self.seen.get(job_id)
            if before in TERMINAL and status != before:
                self.report.flips.setdefault(job_id, [before]).append(status)
            if before not in TERMINAL:
                self.seen[job_id] = status

    def _watcher(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            self._watch_once()

    # --- chaos ---------------------------------------------------------------------------------

    def _fail_over(self) -> None:
        started = time.monotonic()
        old = self.cluster.kill_primary()
        self.cluster.wait_failover(old)
        self.report.failover_seconds.append(time.monotonic() - started)
        self.cluster.restart_node(old)  # back, empty, as the new primary's replica

    def _restart_api(self) -> None:
        api = self.rng.choice(self.apis)
        api.stop()
        api.start()
        self.report.api_restarts += 1

    def _kill_worker(self) -> None:
        ready = self.ready_workers()
        if len(ready) < 2:
            return  # keep one worker rendering while the killed ones load their model again
        name = self.rng.choice(ready)
        self.workers[name].kill()
        self.report.worker_kills += 1
        self.start_worker()

    def _chaos(self, start: float, stop: threading.Event) -> None:
        period = self.config.submit_seconds
        events: list[tuple[float, Any]] = []
        for k in range(self.config.failovers):
            events.append((start + period * (k + 1) / (self.config.failovers + 1), self._fail_over))
        for k in range(self.config.api_restarts):
            events.append((start + period * (k + 0.5) / max(1, self.config.api_restarts), self._restart_api))
        kill_at = start + self.config.kill_every
        while kill_at < start + period:
            events.append((kill_at, self._kill_worker))
            kill_at += self.config.kill_every
        for at, action in sorted(events, key=lambda e: e[0]):
            if stop.wait(max(0.0, at - time.monotonic())):
                return
            try:
                action()
            except Exception as exc:  # a chaos step that did not work is reported, not hidden
                self.report.errors.append(f"{action.__name__}: {exc!r}")

    # --- the run -------------------------------------------------------------------------------

    def memory(self) -> tuple[int, int]:
        info = self.redis.info("memory")
        return int(info["used_memory"]), int(self.redis.dbsize())

    def run(self) -> SoakReport:
        config, report = self.config, self.report
        began = time.monotonic()
        report.load = (os.getloadavg()[0], 0.0)
        for api in self.apis:
            api.start()
        for _ in range(config.workers):
            self.start_worker()
        deadline = time.monotonic() + 600
        while len(self.ready_workers()) < config.workers:
            if time.monotonic() > deadline:
                raise TimeoutError("the workers did not start")
            time.sleep(0.5)
        report.memory_before, report.keys_before = self.memory()

        start, stop = time.monotonic(), threading.Event()
        threads = [
            threading.Thread(target=self._submitter, args=(range(k, config.jobs, 4), start), daemon=True)
            for k in range(4)
        ]
        chaos = threading.Thread(target=self._chaos, args=(start, stop), daemon=True)
        watcher = threading.Thread(target=self._watcher, args=(stop,), daemon=True)
        for thread in [*threads, chaos, watcher]:
            thread.start()
        for thread in threads:
            thread.join()
        chaos.join()  # the last chaos step (a failover) is over before the drain is judged
        drain_until = time.monotonic() + config.drain_seconds
        while time.monotonic() < drain_until:
            self._watch_once()
            if all(self.seen.get(job_id) in TERMINAL for job_id in self.submitted_at):
                break
            time.sleep(1.0)
        self._wait_for_webhooks(min(120.0, config.drain_seconds))
        stop.set()
        watcher.join()
        self._tally()
        report.memory_after, report.keys_after = self.memory()
        report.seconds = time.monotonic() - began
        report.load = (report.load[0], os.getloadavg()[0])
        return report

    def _records(self) -> dict[str, dict[bytes, bytes]]:
        ids = list(self.submitted_at)
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            return dict(zip(ids, pipe.execute(), strict=True))

    def _wait_for_webhooks(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            outcomes = [r.get(b"webhook_status", b"pending") for r in self._records().values() if r]
            if not any(outcome.startswith((b"pending", b"retrying")) for outcome in outcomes):
                return
            time.sleep(1.0)

    def _tally(self) -> None:
        report, records = self.report, self._records()
        report.accepted = len(records)
        for job_id, record in records.items():
            if not record:
                report.lost.append(job_id)
                continue
            status = record[b"status"].decode()
            if status not in TERMINAL:
                report.stuck.append(job_id)
                continue
            setattr(report, status, getattr(report, status) + 1)
            if status == "succeeded" and b"finished_at" in record:
                report.submit_to_done.append(float(record[b"finished_at"]) - self.submitted_at[job_id])
            if self.receiver.delivered[f"{job_id}.{status}"] == 0:
                report.missing_webhooks.append(job_id)
        report.leftover = {
            "renders": int(self.redis.xlen(self.keys.stream)),
            "webhooks": int(self.redis.xlen(self.keys.webhooks)),
        }
        report.duplicate_webhooks = sum(n - 1 for n in self.receiver.delivered.values() if n > 1)
        # The history too: exactly one terminal status event per job, and the last one.
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in records:
                pipe.xrange(self.keys.events(job_id))
            histories = pipe.execute()
        for job_id, entries in zip(records, histories, strict=True):
            events = [json.loads(fields[b"event"]) for _, fields in entries]
            statuses = [e["status"] for e in events if e["type"] == "status"]
            ends = [s for s in statuses if s in TERMINAL]
            if len(ends) > 1 or (ends and statuses[-1] not in TERMINAL):
                report.flips.setdefault(job_id, statuses)


@contextlib.contextmanager
def soak_stack(config: SoakConfig) -> Any:
    """The Sentinel cluster and the soak's processes; everything stopped on the way out."""
    log_dir = config.log_dir or Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    model = config.model
    if model is None:
        from render_service.engine.tiny import build_tiny_model

        model = build_tiny_model(log_dir / "tiny-model")
    cluster = SentinelCluster(down_after_ms=1000).start()
    soak = Soak(config, cluster, Path(model), log_dir)
    try:
        yield soak
    finally:
        soak.stop()
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--submit-seconds", type=float, default=420.0, help="spread the submissions over this long")
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds between worker SIGKILLs")
    parser.add_argument("--failovers", type=int, default=2)
    parser.add_argument("--api-restarts", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--model", type=Path, default=None, help="default: the tiny random-weight model")
    args = parser.parse_args(argv)
    config = SoakConfig(
        jobs=args.jobs, workers=args.workers, submit_seconds=args.submit_seconds, kill_every=args.kill_every,
        failovers=args.failovers, api_restarts=args.api_restarts, steps=args.steps, model=args.model,
    )  # fmt: skip
    with soak_stack(config) as soak:
        print(f"logs in {soak.log_dir}", file=sys.stderr)
        report = soak.run()
    print("\n".join(report.lines()))
    for name in ("lost", "stuck", "bad_answers", "missing_webhooks", "errors"):
        if getattr(report, name):
            print(f"{name}: {getattr(report, name)[:10]}")
    if report.flips:
        print(f"flips: {dict(list(report.flips.items())[:10])}")
    ok = not (report.lost or report.stuck or report.flips or report.bad_answers)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
