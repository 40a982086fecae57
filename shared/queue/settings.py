"""What configures the queue, each field declared once: :class:`QueueSettings` (key prefix, lifetimes and
admission: the base of both services' settings) and :class:`ImageStoreSettings` (where PNGs live).

Each service reads them under its own prefix, so the documented names stay: ``OMOST_RENDER_JOB_TTL_SECONDS``,
``OMOST_RENDER_MAX_JOB_MEGAPIXEL_STEPS``, and for the planner ``OMOST_PLANNER_RENDER_JOB_TTL_SECONDS`` (its
old name, kept) or ``OMOST_PLANNER_JOB_TTL_SECONDS``, ``OMOST_PLANNER_MAX_JOB_MEGAPIXEL_STEPS``. The queue's
depth is one setting for every service, ``OMOST_QUEUE_MAX_DEPTH`` (as ``OMOST_REDIS_URL``, no service
prefix: there is one queue), also read under the render service's older name ``OMOST_RENDER_MAX_QUEUE_DEPTH``.
The image store is the render service's ``OMOST_RENDER_IMAGE_STORE`` / ``OMOST_RENDER_S3_*``, read by the
planner under the same names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.jobs import DEFAULT_MAX_MEGAPIXEL_STEPS
from shared.queue.durability import Durability
from shared.queue.keys import DEFAULT_PREFIX, DEFAULT_TTL_SECONDS, QueueKeys


class QueueSettings(BaseSettings):
    """Where the queue is and what it admits: the base of both services' settings (through
    ``shared.service.settings.ServiceSettings``), so each field is declared once and read under the
    service's prefix (``OMOST_RENDER_MAX_QUEUE_DEPTH``, ``OMOST_PLANNER_MAX_QUEUE_DEPTH``, ...).
    Checked by the submit script, atomically with the enqueue."""

    model_config = SettingsConfigDict(env_prefix="OMOST_QUEUE_", extra="ignore", populate_by_name=True)

    key_prefix: str = Field(default=DEFAULT_PREFIX, min_length=1, description="Prefix of every Redis key.")
    job_ttl_seconds: int = Field(
        default=DEFAULT_TTL_SECONDS, ge=60, description="Records, events, images expire this long after the job ends."
    )
    max_queue_depth: int | None = Field(
        default=1000,
        ge=1,
        # One name for every service that submits (the render API, the planner's /v1/generations and
        # /v1/images/generations): two settings let an operator cap one door and leave the other open.
        validation_alias=AliasChoices("OMOST_QUEUE_MAX_DEPTH", "OMOST_RENDER_MAX_QUEUE_DEPTH"),
        description="Env OMOST_QUEUE_MAX_DEPTH (or OMOST_RENDER_MAX_QUEUE_DEPTH), the same for every service: "
        "submits answer 429 while the stream holds this many jobs; None: no limit.",
    )
    max_job_megapixel_steps: float | None = Field(
        default=DEFAULT_MAX_MEGAPIXEL_STEPS,
        gt=0,
        description="Work budget of one job: width x height x steps x num_images (hires pass included) / 1e6; "
        "bigger jobs get 422. None: no limit.",
    )

    redis_wait_replicas: int = Field(
        default=0,
        ge=0,
        validation_alias="OMOST_REDIS_WAIT_REPLICAS",
        description="Env OMOST_REDIS_WAIT_REPLICAS: replicas that must acknowledge a submit (and each worker "
        "transition) before it counts (Redis WAIT). 0: none (the primary's word, and its AOF, are enough).",
    )
    redis_wait_timeout_ms: int = Field(
        default=1000,
        ge=1,
        validation_alias="OMOST_REDIS_WAIT_TIMEOUT_MS",
        description="Env OMOST_REDIS_WAIT_TIMEOUT_MS: how long a write waits for those replicas; a submit not "
        "acknowledged in time answers 503 + Retry-After.",
    )

    @property
    def durability(self) -> Durability:
        return Durability(self.redis_wait_replicas, self.redis_wait_timeout_ms)

    @property
    def keys(self) -> QueueKeys:
        return QueueKeys(self.key_prefix)

    @property
    def budget_setting(self) -> str:
        """The environment name of the budget, which a refusal names."""
        return f"{self.model_config.get('env_prefix', '')}MAX_JOB_MEGAPIXEL_STEPS"


class ImageStoreSettings(BaseSettings):
    """Where PNGs live; a mixin of ``RenderSettings`` (prefix ``OMOST_RENDER_``) and read alone, under the same
    names, by the planner (:class:`RenderImageStoreSettings`)."""

    image_store: Literal["redis", "s3"] = Field(
        default="redis", description="Where PNGs live: next to the record in Redis, or in an S3-compatible bucket."
    )
    s3_bucket: str = Field(default="", description="Bucket of the s3 image store (required with it).")
    s3_prefix: str = Field(default="renders/", description="Key prefix of the objects in the bucket.")
    s3_region: str = Field(default="", description="Region; empty: from the AWS config/provider chain.")
    s3_endpoint_url: str = Field(default="", description="Empty: AWS S3; else MinIO, R2, GCS interop, ...")
    s3_redirect: bool = Field(
        default=True, description="GET .../images/{n} answers 302 to a presigned URL; false: the API streams."
    )
    s3_presign_seconds: int = Field(default=900, ge=1, le=7 * 24 * 3600, description="Life of a presigned URL.")
    s3_upload_retry_seconds: float = Field(
        default=60.0, gt=0, description="How long a worker retries an unreachable store before failing the job."
    )

    @model_validator(mode="after")
    def _s3_needs_a_bucket(self) -> ImageStoreSettings:
        if self.image_store == "s3" and not self.s3_bucket:
            raise ValueError("OMOST_RENDER_IMAGE_STORE=s3 needs OMOST_RENDER_S3_BUCKET")
        return self


class RenderImageStoreSettings(ImageStoreSettings):
    """The render service's image store settings as another service (the planner) reads them."""

    model_config = SettingsConfigDict(env_prefix="OMOST_RENDER_", extra="ignore")
