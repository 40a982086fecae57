"""Settings of the render API and workers, read from the environment (prefix ``OMOST_RENDER_``).

One class serves both processes so that an operator sets the key prefix, TTL and Redis URL once
for the whole deployment. The Redis URL is ``OMOST_REDIS_URL``, shared with the planner service.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from render_service.engine.backends import ATTENTION_BACKENDS, DEFAULT_ATTENTION
from shared.jobs import MODEL_NAME_PATTERN
from shared.queue import ImageStoreSettings, QueueKeys
from shared.service.logging import configure_logging
from shared.service.settings import ServiceSettings

__all__ = ["RenderSettings", "configure_logging"]  # configure_logging: the worker's entry point uses it


class RenderSettings(ServiceSettings, ImageStoreSettings):
    """``redis_url``, ``api_token``, logging, the body limit and the queue's settings (``key_prefix``,
    ``job_ttl_seconds``, ``max_queue_depth``, ``max_job_megapixel_steps``) come from the base; the image
    store's from :class:`shared.queue.ImageStoreSettings`."""

    model_config = SettingsConfigDict(env_prefix="OMOST_RENDER_", extra="ignore", populate_by_name=True)

    # --- shared by API and workers
    public_url: str = Field(default="", description="Base of URLs in webhooks; the API uses its own if empty.")

    # --- image store (shared by API and workers; issue 18): the fields of shared.queue.ImageStoreSettings

    # --- API
    host: str = "127.0.0.1"
    port: int = Field(default=8100, ge=0, le=65535)
    api_workers: int = Field(default=1, ge=1, le=64, description="uvicorn worker processes (the API is stateless).")
    readyz_requires_worker: bool = Field(default=True, description="/readyz is 503 until a worker is live.")
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    max_event_streams: int = Field(
        default=1000, ge=1, description="Open SSE streams on all API replicas together (counted in Redis); 429 beyond."
    )
    max_event_streams_per_client: int = Field(
        default=32,
        ge=1,
        description="Open SSE streams per token (per client address without auth), all API replicas together; "
        "429 beyond.",
    )
    redis_max_connections: int = Field(
        default=100, ge=2, description="Redis connections per API process; a request waits for a free one."
    )
    redis_pool_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long a request waits for a free Redis connection before a 503."
    )
    cors_origins: str = Field(
        default="*",
        description="Comma-separated origins allowed to call the API from a browser (the playground is served "
        "by the planner, another origin); empty: none.",
    )

    # --- webhooks (sent by workers, URL checked by the API too)
    allow_private_webhooks: bool = Field(
        default=False, description="Allow webhook targets on loopback, private or link-local addresses."
    )
    webhook_secret: SecretStr | None = Field(default=None, description="Signs webhook bodies (HMAC-SHA256).")
    webhook_max_attempts: int = Field(
        default=5, ge=1, le=20, description="POSTs of one delivery, across workers, before it is given up on."
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, description="Per phase of one POST (connect, read).")
    webhook_retry_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Wait before the second attempt of a delivery; it doubles with each attempt after. A delivery "
        "whose worker died is retried by another worker once this (and 3 x the timeout) has passed.",
    )
    webhook_retry_max_seconds: float = Field(default=600.0, gt=0, description="The longest wait between attempts.")

    # --- worker
    model: str | None = Field(
        default=None,
        description="Hub id, diffusers folder or .safetensors file (SDXL or Flux.1, told apart from the checkpoint); "
        "tiny, tiny-flux and tiny-flux-schnell are the random-weight test models.",
    )
    model_name: str | None = Field(
        default=None,
        pattern=MODEL_NAME_PATTERN,
        description="The name requests give in `model` to reach this worker's model; its jobs come from the stream "
        "{prefix}renders:{name}. Unset: the default model (requests without `model`, stream {prefix}renders).",
    )
    config: str | None = Field(
        default=None,
        description="Single-file checkpoints only: a diffusers folder or hub id with the rest of the pipeline "
        "(SDXL's component configs; Flux's text encoders and VAE).",
    )
    model_ttl_seconds: int = Field(
        default=3600,
        ge=10,
        description="A model stays listed (GET /v1/models) and accepted at submit this long after a worker last "
        "registered it; with workers scaled to zero, keep it above the idle time.",
    )
    device: str = "auto"
    dtype: str = "auto"
    cpu_offload: bool = False
    cpu_threads: int | None = Field(
        default=None,
        ge=1,
        description="torch threads of a worker on the CPU; unset: half the cores (at least 1). Threads beyond the "
        "cores that are really free make every step wait for a descheduled thread: 2 threads on a 2-core "
        "host beside one busy process rendered 8x slower than 1.",
    )
    vae: str | None = Field(
        default=None, description="A VAE instead of the checkpoint's, e.g. the fp16-safe madebyollin/sdxl-vae-fp16-fix."
    )
    compile: bool = Field(
        default=False, description="torch.compile the UNet (GPU); compiled at worker start for warm_up_sizes."
    )
    attention: str | None = Field(
        default=None,
        description="Regional attention backend, one of render_service.engine.backends.ATTENTION_BACKENDS: sdpa "
        "(one masked SDPA call over all tokens), packed (only the pixel-token pairs a region allows, FlashAttention's "
        "varlen kernel on CUDA fp16/bf16) or flex (FlexAttention with a block mask; needs compile; SDXL only). Unset: "
        f"the model family's default ({DEFAULT_ATTENTION} on SDXL, packed on Flux). Same images within rounding; a "
        "backend that cannot run on the device, dtype, compile mode or model family stops the worker at start.",
    )
    warm_up_sizes: str = Field(
        default="1024x1024", description="WIDTHxHEIGHT,... rendered once at worker start when compile is on."
    )
    batch_max_images: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Images one UNet batch may hold across queued jobs that share size, steps, sampler, hires "
        "fix and CFG; 1: one job at a time. Jobs join only if already waiting, in queue order.",
    )
    batch_max_pixels: int = Field(
        default=512 * 512,
        ge=64 * 64,
        description="Only jobs of at most this many pixels (width x height) are batched: at larger sizes one job "
        "already fills the device.",
    )
    worker_name: str | None = Field(default=None, description="Consumer name; hostname-pid-random if unset.")
    claim_idle_seconds: float = Field(
        default=60.0, gt=0, description="A job whose worker sent no heartbeat for this long is reclaimed."
    )
    heartbeat_seconds: float | None = Field(default=None, gt=0, description="Default: claim_idle_seconds / 4.")
    max_deliveries: int = Field(default=3, ge=1, description="After this many deliveries a job fails.")
    block_seconds: float = Field(default=1.0, gt=0, description="How long an idle worker waits per read.")
    shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, description="On SIGTERM, finish the current job if done within this; else requeue."
    )
    max_job_seconds: float | None = Field(
        default=None, gt=0, description="A job still rendering after this long fails with a reason; unset: no limit."
    )
    redis_retry_seconds: float = Field(
        default=600.0, gt=0, description="How long a worker retries writing a result through a Redis outage."
    )
    test_step_gate: Path | None = Field(
        default=None,
        description="Tests only: a folder whose files hold rendering jobs between steps "
        "(render_service/worker/step_gate.py); unset in production.",
    )

    @field_validator("attention")
    @classmethod
    def _attention_is_registered(cls, name: str | None) -> str | None:
        if name is not None and name not in ATTENTION_BACKENDS:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}; got {name!r}")
        return name

    @model_validator(mode="after")
    def _heartbeat_below_deadline(self) -> RenderSettings:
        if self.heartbeat_seconds is None:
            self.heartbeat_seconds = self.claim_idle_seconds / 4
        if self.heartbeat_seconds * 2 > self.claim_idle_seconds:
            # A heartbeat delayed once must not let the deadline pass, or live jobs get stolen.
            raise ValueError("heartbeat_seconds must be at most half of claim_idle_seconds")
        return self

    @property
    def keys(self) -> QueueKeys:
        """The queue's keys, the job stream being this worker's model's (:attr:`model_name`)."""
        return QueueKeys(self.key_prefix, model=self.model_name)

    @property
    def heartbeat_interval(self) -> float:
        assert self.heartbeat_seconds is not None
        return self.heartbeat_seconds
