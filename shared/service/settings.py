"""Settings both services declare the same way: the Redis URL, the queue (prefix, TTL, admission), logging, limits."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from shared.queue import QueueSettings


class ServiceSettings(QueueSettings):
    """Base of ``PlannerSettings`` and ``RenderSettings``; each sets its own ``env_prefix``. The key prefix,
    job TTL, queue depth and work budget come from :class:`shared.queue.QueueSettings`."""

    # populate_by_name: Settings(redis_url=...) works in code; from the environment only
    # OMOST_REDIS_URL is read (a generic REDIS_URL must not be picked up by accident).
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0",
        validation_alias="OMOST_REDIS_URL",
        description="Env OMOST_REDIS_URL (no service prefix: planner and render service share one Redis).",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="If set, /v1/* needs 'Bearer <token>'. Several tokens (one per client) separated by commas: "
        "each sees only the jobs it submitted. Unset: open to anyone who can connect (trusted networks only).",
    )
    api_tokens_file: Path | None = Field(
        default=None,
        description="A TOML file of named tokens, each with its own quotas (megapixel-steps per hour, concurrent "
        "jobs); re-read when it changes, so tokens are added, rotated and revoked without a restart.",
    )
    admin_token: SecretStr | None = Field(
        default=None, description="Opens the admin views (/v1/admin/*) and sees every job; unset: admin views off."
    )
    log_level: str = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per log line; false: plain text.")
    retry_after_seconds: int = Field(default=10, ge=1, description="Retry-After sent with 429 and 503.")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="Bigger request bodies get 413.")
    limit_lease_seconds: float = Field(
        default=30.0,
        ge=2,
        le=3600,
        description="Places counted in Redis for all replicas together (plans in flight, event streams) are "
        "leased this long and renewed every third of it: a crashed replica's places come back after it.",
    )
    rate_limit_per_second: float | None = Field(
        default=None,
        gt=0,
        description="Requests per second per credential (its token; its address without auth) to /v1, for all "
        "replicas together (a token bucket in Redis); 429 + Retry-After beyond. None: no limit here.",
    )
    rate_limit_burst: int = Field(
        default=60, ge=1, description="Requests a credential may send at once before the rate applies."
    )

    @property
    def limits_scope(self) -> str:
        """This service's part of the limit keys in Redis (``planner``, ``render``): its replicas share them."""
        prefix = str(self.model_config.get("env_prefix", ""))
        return prefix.removeprefix("OMOST_").strip("_").lower() or "service"
