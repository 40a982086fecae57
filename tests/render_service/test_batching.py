"""A worker that batches queued jobs of one shape (``OMOST_RENDER_BATCH_MAX_IMAGES``), as a real process.

The tests run in order on one worker: a batch forms from the jobs waiting behind a long one, in
queue order; each of its jobs is beaten for, canceled and settled on its own; SIGTERM gives the
whole batch, and the job held for next, back to the queue.
"""

from __future__ import annotations

import io
import json
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from render_service.worker.heartbeat import owner_is_alive
from shared.queue import GROUP, text
from tests.render_service.helpers import Stack, render_stack, submit, unique_prefix, wait_for, wait_terminal
from tests.render_service.test_workers import CLAIM_IDLE_SECONDS
from tests.render_service.test_workers import SETTINGS as WORKER_SETTINGS
from tests.support import RedisServer, wait_until

# The short deadlines of the multi-worker tests, so heartbeats are put to work within seconds.
SETTINGS = {**WORKER_SETTINGS, "batch_max_images": 5, "batch_max_pixels": 64 * 64}
STEPS = 4
"""Jobs are held between steps by the stack's step gate wherever a test needs them still running,
so a few steps are enough whatever the machine's speed."""
OTHER_CANVAS = {"global_description": {"description": "a blue boat on a lake", "HTML_web_color_name": "blue"}}

# A real worker process (torch, model load): tens of seconds.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("batching-logs")
    with render_stack(redis_server.url, unique_prefix("batching"), tiny_model, logs, {"b": SETTINGS}, SETTINGS) as s:
        yield s


def rendering(stack: Stack, job_id: str) -> None:
    wait_for(stack.http, job_id, lambda r: r["status"] == "running" and r["progress"]["step"] >= 1, 120, "rendering")


def worker_entries(stack: Stack) -> list[str]:
    entries = stack.redis.hget(stack.keys.worker("b"), "entry")
    return text(entries).split(",") if entries else []


def image(stack: Stack, job_id: str) -> np.ndarray:
    answer = stack.http.get(f"/v1/renders/{job_id}/images/0")
    assert answer.status_code == 200, answer.text
    return np.asarray(Image.open(io.BytesIO(answer.content)), dtype=np.int16)


def test_waiting_jobs_of_one_shape_share_a_batch_in_queue_order(stack: Stack) -> None:
    http, r, keys, gate = stack.http, stack.redis, stack.keys, stack.gate
    with gate.holding_all():
        blocker = submit(http, steps=STEPS)
        rendering(stack, blocker)
        # Waiting behind it: three of one shape (different canvases, seeds, image counts, CFG scales),
        # then one of another shape, then one more of the first shape, which must not overtake it.
        batched = [
            submit(http, steps=STEPS, seed=1),
            submit(http, steps=STEPS, seed=2, canvas=OTHER_CANVAS, guidance_scale=8.0),
            submit(http, steps=STEPS, seed=3, num_images=2),  # 4 images of the 5 allowed: it reads one more
        ]
        other_shape = submit(http, steps=3)
        last = submit(http, steps=STEPS, seed=4)
        gate.let_pass(blocker)

        rendering(stack, batched[0])
        entries = [text(r.hget(keys.job(job_id), "entry_id")) for job_id in [*batched, other_shape]]
        named = "the heartbeat names the batch and the held entry"
        wait_until(lambda: worker_entries(stack) == entries, 5, 0.05, named)
        # Held past the claim deadline, every entry stays alive: no other worker may reclaim one.
        time.sleep(CLAIM_IDLE_SECONDS * 1.5)
        assert r.hget(keys.job(batched[0]), "status") == b"running", "the gate holds the batch"
        assert all(owner_is_alive(r, keys, "b", entry) for entry in entries)
        stale = r.xpending_range(keys.stream, GROUP, min="-", max="+", count=10, idle=int(CLAIM_IDLE_SECONDS * 1000))
        assert stale == [], "heartbeats reset every held entry's idle time"

    records = {job_id: wait_terminal(http, job_id, 240) for job_id in [blocker, *batched, other_shape, last]}
    assert all(rec["status"] == "succeeded" and rec["deliveries"] == 1 for rec in records.values()), records
    assert all(records[job_id]["timings"]["batch_jobs"] == 3 for job_id in batched)
    assert "batch_jobs" not in records[blocker]["timings"]
    assert "batch_jobs" not in records[other_shape]["timings"], "a job of another shape runs alone"
    assert records[batched[2]]["num_images"] == 2
    started = [records[job_id]["started_at"] for job_id in [*batched, other_shape, last]]
    assert started == sorted(started), "jobs start in queue order"
    assert r.xpending(keys.stream, GROUP)["pending"] == 0

    # Each batched job's image is the one it gets rendered alone (1 grey level: batched matmuls).
    alone_requests = [{"seed": 1}, {"seed": 2, "canvas": OTHER_CANVAS, "guidance_scale": 8.0}]
    for job_id, overrides in zip(batched[:2], alone_requests, strict=True):
        alone = wait_terminal(http, submit(http, steps=STEPS, **overrides))
        assert "batch_jobs" not in alone["timings"]
        assert np.abs(image(stack, job_id) - image(stack, alone["id"])).max() <= 1


def test_one_job_of_a_batch_is_canceled_alone(stack: Stack) -> None:
    http, gate = stack.http, stack.gate
    with gate.holding_all():
        blocker = submit(http, steps=STEPS)
        rendering(stack, blocker)
        kept, canceled = submit(http, steps=STEPS, seed=5), submit(http, steps=STEPS, seed=6)
        gate.let_pass(blocker)
        rendering(stack, canceled)  # the batch of two is held after its first step
        assert http.delete(f"/v1/renders/{canceled}").status_code == 202
    record = wait_terminal(http, canceled, 120)
    assert record["status"] == "canceled" and record["progress"]["step"] < STEPS
    kept_record = wait_terminal(http, kept, 120)
    assert kept_record["status"] == "succeeded" and kept_record["timings"]["batch_jobs"] == 2
    assert http.get(f"/v1/renders/{canceled}/images/0").status_code == 409


def test_the_next_job_renders_while_the_last_one_settles(stack: Stack) -> None:
    """PNG encoding and the record write run on the settle thread: a 1024² PNG of noise takes
    0.2-0.3 s here, a claim a few milliseconds, so the next job starts before the last one ends."""
    http, gate = stack.http, stack.gate
    with gate.holding_all():
        blocker = submit(http, steps=STEPS)
        rendering(stack, blocker)
        big, small = submit(http, steps=1, width=1024, height=1024), submit(http, steps=1, seed=9)
    records = [wait_terminal(http, job_id, 120) for job_id in (big, small)]
    assert all(record["status"] == "succeeded" for record in records)
    assert records[1]["started_at"] < records[0]["finished_at"], "rendering and settling overlap"
    assert len(image(stack, big)) == 1024


def test_sigterm_gives_the_batch_and_the_held_job_back(stack: Stack) -> None:
    http, r, keys, gate = stack.http, stack.redis, stack.keys, stack.gate
    with gate.holding_all():
        blocker = submit(http, steps=STEPS)
        rendering(stack, blocker)
        batched = [submit(http, steps=STEPS, seed=s) for s in (7, 8)]
        held = submit(http, steps=3)
        gate.let_pass(blocker)
        rendering(stack, batched[1])
        worker = stack.workers["b"].process
        assert worker is not None
        worker.send_signal(signal.SIGTERM)
        # Held, the batch can't end within the 0.5 s grace: it is given back and the worker exits cleanly.
        assert worker.wait(60) == 0
    for job_id in [*batched, held]:
        record = http.get(f"/v1/renders/{job_id}").json()
        assert record["status"] == "queued", record
        events = [json.loads(f[b"event"]) for _, f in r.xrange(keys.events(job_id))]
        assert [e["status"] for e in events if e["type"] == "status"][-1] == "queued"
    wait_until(lambda: r.xpending(keys.stream, GROUP)["pending"] == 0, 10, 0.1, "nothing left pending")
    assert r.xlen(keys.stream) >= 3, "every job is back in the stream for another worker"
