"""The chaos soak, short (bench/chaos_soak.py runs the long one): 40 tiny jobs, each with a webhook,
through 3 workers on a Sentinel-backed Redis while workers are SIGKILLed, the primary is SIGKILLed
twice and an API replica restarts. 0 lost, 0 stuck, 0 terminal status flips, 0 answers other than
2xx or 503/429 with Retry-After, every webhook delivered.

About 2 minutes of real processes; counts, not speed, are asserted (the soak waits as long as the
machine needs, up to its drain limit).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos_soak import SoakConfig, soak_stack

pytestmark = pytest.mark.slow


def test_a_short_chaos_soak_loses_nothing(tiny_model: Path, tmp_path: Path) -> None:
    config = SoakConfig(
        jobs=40, submit_seconds=45, kill_every=10, failovers=2, api_restarts=1, drain_seconds=300,
        model=tiny_model, log_dir=tmp_path,
    )  # fmt: skip
    with soak_stack(config) as soak:
        report = soak.run()
    print("\n".join(report.lines()))
    assert report.accepted == config.jobs and not report.errors, report.errors
    assert report.failover_seconds and len(report.failover_seconds) == 2 and report.api_restarts == 1
    assert report.worker_kills >= 1
    assert not report.lost and not report.stuck, (report.lost, report.stuck)
    assert not report.flips, report.flips
    assert not report.bad_answers, report.bad_answers[:5]
    assert report.succeeded == config.jobs
    assert not report.missing_webhooks, report.missing_webhooks
    assert report.leftover == {"renders": 0, "webhooks": 0}, report.leftover
