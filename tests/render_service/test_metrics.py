"""The render API's /metrics as a process on its own redis-server: what workers count into the metrics
hash comes out under the documented names, and with Redis gone it still answers, saying so."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis

from render_service.metrics import count_image_store_error, count_webhook, observe_phases
from shared.queue import QueueKeys
from tests.render_service.helpers import Api, unique_prefix
from tests.support import RedisServer


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
