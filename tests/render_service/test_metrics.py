"""The render API's /metrics as a process on its own redis-server: what workers count into the metrics
hash comes out under the documented names, with Redis gone it still answers, saying so, and the queue's
depth and jobs are per model, as the depth limit is."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

from render_service.metrics import count_image_store_error, count_webhook, observe_phases
from shared.queue import GROUP, QueueKeys
from shared.queue.models import register_model
from tests.render_service.helpers import Api, body, unique_prefix
from tests.render_service.test_model_registry import FLUX, SDXL
from tests.support import RedisServer, wait_until


def sample(text: str, name: str) -> float:
    """The value of the sample line starting with ``name`` (labels included) in Prometheus text."""
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[-1])


def test_worker_counts_are_exported_and_redis_outages_reported(tmp_path: Path) -> None:
    server = RedisServer().start()
    prefix = unique_prefix("metrics")
    api = Api(server.url, prefix, tmp_path).start()
    try:
        keys = QueueKeys(prefix)
        with redis.Redis.from_url(server.url) as client, client.pipeline() as pipe:
            # The outcome strings render_service.webhooks.deliver returns.
            for outcome in ("delivered: HTTP 204 after 2 attempt(s)", "delivered: HTTP 200 after 1 attempt(s)"):
                count_webhook(pipe, keys, outcome)
            count_webhook(pipe, keys, "refused: webhook_url host 'x' resolves to 10.0.0.1, a loopback, ...")
            count_webhook(pipe, keys, "failed after 3 attempts: HTTP 503")
            count_image_store_error(pipe, keys, "upload")
            observe_phases(pipe, keys, {"denoise": 1.7, "decode": 0.2, "total": 2.0})
            pipe.execute()
        text = httpx.get(f"{api.url}/metrics", timeout=10).text
        assert sample(text, "omost_render_redis_up") == 1
        assert sample(text, 'omost_render_webhooks_total{outcome="delivered"}') == 2
        assert sample(text, 'omost_render_webhooks_total{outcome="refused"}') == 1
        assert sample(text, 'omost_render_webhooks_total{outcome="failed"}') == 1
        assert sample(text, 'omost_render_webhooks_total{outcome="rejected"}') == 0
        assert sample(text, 'omost_render_image_store_errors_total{operation="upload"}') == 1
        assert sample(text, 'omost_render_phase_seconds_bucket{le="1.5",phase="denoise"}') == 0
        assert sample(text, 'omost_render_phase_seconds_bucket{le="2.0",phase="denoise"}') == 1
        assert sample(text, 'omost_render_phase_seconds_count{phase="decode"}') == 1
        assert "phase=\"total\"" not in text  # the engine's total is not a phase
        server.stop()
        answer = httpx.get(f"{api.url}/metrics", timeout=30)
        assert answer.status_code == 200, answer.text
        assert sample(answer.text, "omost_render_redis_up") == 0
        assert "omost_render_jobs_finished_total" not in answer.text  # nothing made up while Redis is away
    finally:
        api.stop()
        server.stop()


def test_queue_depth_is_per_model_and_so_is_the_depth_limit(tmp_path: Path) -> None:
    """Two models on one Redis, no worker: each stream's depth and jobs are their own series, the
    limit (OMOST_QUEUE_MAX_DEPTH=3) refuses a full model's submits and not the other's, and jobs left
    on the stream of a model whose registration expired stay counted."""
    server = RedisServer().start()
    prefix = unique_prefix("depths")
    keys = QueueKeys(prefix)
    api = Api(server.url, prefix, tmp_path, OMOST_QUEUE_MAX_DEPTH=3).start()
    try:
        with redis.Redis.from_url(server.url) as client:
            with client.pipeline() as pipe:
                register_model(pipe, keys, SDXL, 600)
                register_model(pipe, keys, FLUX, 600)
                pipe.execute()
            with httpx.Client(base_url=api.url, timeout=30) as http:
                for model, count in (("flux", 3), ("default", 2)):
                    for _ in range(count):
                        answer = http.post("/v1/renders", json=body(model=model))
                        assert answer.status_code == 202, answer.text
                full = http.post("/v1/renders", json=body(model="flux"))
                assert full.status_code == 429, full.text  # flux's stream holds 3
                assert "holds 3 jobs for model 'flux' (limit 3)" in full.json()["detail"]
                assert http.post("/v1/renders", json=body()).status_code == 202  # default's held 2
                # A flux worker takes one job (what its XREADGROUP does): running, still on the stream.
                client.xgroup_create(keys.stream_of("flux"), GROUP, id="0")
                client.xreadgroup(GROUP, "flux-1", {keys.stream_of("flux"): ">"}, count=1)
                text = http.get("/metrics").text
                assert sample(text, 'omost_render_queue_depth{model="flux"}') == 3
                assert sample(text, 'omost_render_queue_depth{model="default"}') == 3
                assert sample(text, 'omost_render_jobs{model="flux",status="queued"}') == 2
                assert sample(text, 'omost_render_jobs{model="flux",status="running"}') == 1
                assert sample(text, 'omost_render_jobs{model="default",status="running"}') == 0
                assert sample(text, "omost_render_queue_depth_limit") == 3
                # Flux's last worker is gone and its registration expires: its jobs are still counted.
                with client.pipeline() as pipe:
                    register_model(pipe, keys, FLUX, 1)  # its last heartbeat
                    pipe.execute()
                wait_until(lambda: not client.exists(keys.model_info("flux")), 10, 0.05, "the registration to expire")
                assert "flux" not in {m["name"] for m in http.get("/v1/models").json()["models"]}
                text = http.get("/metrics").text
                assert sample(text, 'omost_render_queue_depth{model="flux"}') == 3
    finally:
        api.stop()
        server.stop()
