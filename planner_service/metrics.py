"""Prometheus metrics of the planner, in a registry per app (so several apps in one process,
as in tests, do not collide in the global registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000)


class PlannerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.plans = Counter("omost_planner_plans", "Plan requests by outcome.", ["outcome"], registry=r)
        self.parse_failures = Counter(
            "omost_planner_parse_failures", "LLM answers that did not parse into a canvas.", registry=r
        )
        self.retries = Counter("omost_planner_retries", "Plans retried with a new seed.", registry=r)
        self.completion_tokens = Counter("omost_planner_completion_tokens", "Tokens the LLM generated.", registry=r)
        self.tokens_per_second = Histogram(
            "omost_planner_tokens_per_second", "Generation speed per LLM call.", buckets=RATE_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "omost_planner_plan_seconds", "Time to answer a plan request.", buckets=LATENCY_BUCKETS, registry=r
        )
