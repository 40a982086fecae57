"""Prometheus metrics of the planner, in a registry per app (so several apps in one process,
as in tests, do not collide in the global registry).

Names follow Prometheus's conventions: base units in the name (``_seconds``), counters end in
``_total`` (prometheus_client appends it), and the latency buckets are dense between 10 and 60 s,
where a plan on a CPU (about 30 s) lands, as well as around a GPU's 1-5 s.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600)
RATE_BUCKETS = (1, 5, 10, 20, 40, 60, 80, 100, 150, 200, 400, 1000)

PLAN_OUTCOMES = ("ok", "parse_failed", "unavailable", "error")
"""``omost_planner_plans_total{outcome}``: a canvas; no canvas after the retries; the LLM unreachable; anything else."""

FAILURE_CAUSES = ("parse_failed", "llm_unavailable", "llm_error", "store_unavailable", "other")
"""Why a plan request failed (``omost_planner_plan_failures_total{cause}``): no canvas in the LLM's
answers after the retries; the LLM server unreachable or silent; the LLM answered an error; Redis
(the conversation store) unreachable; anything else. See :meth:`planner_service.service.PlanService`."""


class PlannerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.plans = Counter("omost_planner_plans", "Plan requests by outcome.", ["outcome"], registry=r)
        for outcome in PLAN_OUTCOMES:
            self.plans.labels(outcome)  # exported from the start, at 0, so rates and ratios have a series
        self.failures = Counter(
            "omost_planner_plan_failures", "Plan requests that failed, by cause.", ["cause"], registry=r
        )
        for cause in FAILURE_CAUSES:
            self.failures.labels(cause)
        self.parse_failures = Counter(
            "omost_planner_parse_failures", "LLM answers that did not parse into a canvas.", registry=r
        )
        self.retries = Counter("omost_planner_retries", "Plans retried with a new seed.", registry=r)
        self.completion_tokens = Counter(
            "omost_planner_completion_tokens", "Tokens the LLM generated, every call.", registry=r
        )
        self.llm_seconds = Histogram(
            "omost_planner_llm_request_seconds",
            "Seconds per LLM call (tokens/s overall: rate of completion tokens over rate of this sum).",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "omost_planner_tokens_per_second", "Generation speed per LLM call.", buckets=RATE_BUCKETS, registry=r
        )
        self.latency = Histogram(
            "omost_planner_plan_seconds", "Time to answer a plan request.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.llm_up = Gauge(
            "omost_planner_llm_up", "Whether the LLM server answered at the last scrape (1) or not (0).", registry=r
        )
        self.redis_up = Gauge(
            "omost_planner_redis_up", "Whether Redis answered at the last scrape (1) or not (0).", registry=r
        )
