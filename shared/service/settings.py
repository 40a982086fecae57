"""Settings both services declare the same way: the Redis URL, the queue (prefix, TTL, admission), logging, limits."""

from __future__ import annotations

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
    admin_token: SecretStr | None = Field(
        default=None, description="Opens the admin views (/v1/admin/*) and sees every job; unset: admin views off."
    )
    log_level: str = "INFO"
    log_json: bool = Field(default=True, description="One JSON object per log line; false: plain text.")
    retry_after_seconds: int = Field(default=10, ge=1, description="Retry-After sent with 429 and 503.")
    max_body_bytes: int = Field(default=256 * 1024, ge=1024, description="Bigger request bodies get 413.")
