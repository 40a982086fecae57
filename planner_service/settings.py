"""Settings of the planner, read from the environment (prefix ``OMOST_PLANNER_``).

The Redis URL is ``OMOST_REDIS_URL`` (no prefix), shared with the render service, because
``POST /v1/generations`` enqueues into the render service's queue.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from planner_service.llm.client import LLMKind
from planner_service.llm.embedded import SMOLLM2_FILE
from shared.contract import LLM_DEFAULTS
from shared.grammar import Profile
from shared.queue import DEFAULT_TTL_SECONDS
from shared.service.settings import ServiceSettings

EMBEDDED_FREQUENCY_PENALTY = 0.3
"""Measured on 20 prompts with SmolLM2 and the strict grammar: plans with no degenerate field rose
from 11/20 to 17/20, all 20 still parsing (docs/planner.md)."""

SMALL_MODEL_MAX_NEW_TOKENS = 1536
"""A small model's default answer length. Its shaped plans take 450-700 tokens (median 467 embedded,
550-700 on vLLM; eight subjects ~1100), so a plan past 1536 is a loop the grammar allows (tags of
digits, say), and Omost's 4096 let one run for minutes: 221 s at ~18 tokens/s on vLLM under load. Cut
here, it yields the canvas of its complete calls. OMOST_PLANNER_MAX_NEW_TOKENS or a request's
max_new_tokens still asks for more."""

SMALL_MODELS = ("smollm",)
"""Name fragments (lower case) of the small models the strict shaping was measured with: they plan
well only inside it, wherever they are served (embedded llama.cpp or vLLM)."""
OMOST_MODELS = ("omost",)
"""Omost's own fine-tunes write their canvases unaided: the permissive shaping, Omost's sampling."""


RETIRED_QUEUE_DEPTH = "OMOST_PLANNER_MAX_QUEUE_DEPTH"


class PlannerSettings(ServiceSettings):
    """``redis_url``, ``api_token``, logging and the queue's settings (``key_prefix``, ``job_ttl_seconds``,
    ``max_queue_depth``, ``max_job_megapixel_steps``: :class:`shared.queue.QueueSettings`) come from the base."""

    model_config = SettingsConfigDict(env_prefix="OMOST_PLANNER_", extra="ignore", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    retry_after_seconds: int = Field(default=5, ge=1, description="Retry-After sent with 429 and 503.")
    max_body_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Bigger request bodies get 413 (inline history of 50 turns of Omost code fits).",
    )

    # --- the LLM
    llm_url: str | None = Field(
        default=None,
        description="Base URL of an OpenAI-compatible server (e.g. http://vllm:8000/v1). "
        "None: start the embedded llama.cpp server.",
    )
    llm_model: str | None = Field(default=None, description="Model name sent to the server; None: its first.")
    llm_api_key: SecretStr | None = None
    llm_kind: LLMKind | None = Field(
        default=None, description="Grammar field: llamacpp, vllm or none. None: llamacpp when embedded, else none."
    )
    grammar_profile: Profile | Literal["auto"] = Field(
        default="auto",
        description="auto: strict-content for a small model (SmolLM2, or any embedded one not named Omost), "
        "permissive for an Omost model (or any served one not known to be small).",
    )
    subject_constraints: bool | None = Field(
        default=None,
        description="Per-request grammar: one region per subject of the prompt, each opening with it, the "
        "prompt's words opening the global tags; an edit rewrites only the regions it names; negated and "
        "removed words are banned. None: on for a small model (as grammar_profile's auto).",
    )
    one_shot: bool | None = Field(
        default=None,
        description="Put a real Omost answer in the context first. None: on for a small model (as grammar_profile).",
    )
    connect_timeout_seconds: float = Field(default=3.0, gt=0)
    read_timeout_seconds: float = Field(default=300.0, gt=0, description="Longest silence from the LLM.")
    plan_timeout_seconds: float = Field(
        default=600.0,
        gt=0,
        description="Longest a plan may take, retries included: a streamed plan then stops and yields the canvas "
        "of its complete calls (truncated), a plain one is a 504. The LLM request is closed (vLLM aborts it).",
    )
    connect_retries: int = Field(default=3, ge=1, le=10, description="Attempts to connect before a 503.")
    max_concurrent_plans: int = Field(
        default=16, ge=1, le=4096, description="Plans in flight at once (streamed ones included); 429 beyond."
    )
    max_retries: int = Field(default=2, ge=0, le=10, description="New-seed retries of a plan that does not parse.")
    accept_truncated: bool = Field(
        default=True, description="A plan cut off by max_new_tokens yields the canvas of its complete calls."
    )

    # --- sampling defaults (Omost's)
    temperature: float = Field(default=LLM_DEFAULTS["temperature"], ge=0, le=2)
    top_p: float = Field(default=LLM_DEFAULTS["top_p"], gt=0, le=1)
    max_new_tokens: int = Field(default=LLM_DEFAULTS["max_new_tokens"], ge=16, le=32768)
    frequency_penalty: float | None = Field(
        default=None,
        ge=-2,
        le=2,
        description="OpenAI frequency_penalty for fresh plans (edits get 0). None: 0.3 for a small "
        "model (it repeats itself), else 0 (Omost's sampling).",
    )
    context_tokens: int = Field(default=LLM_DEFAULTS["context_tokens"], ge=512, description="The model's window.")

    # --- the embedded llama.cpp server
    gguf_path: Path | None = Field(default=None, description="GGUF for the embedded server; None: SmolLM2.")
    embedded_threads: int = Field(default=0, ge=0, description="0: half the usable cores (at least 1).")
    embedded_verbosity: int = Field(default=1, ge=0, le=4, description="llama.cpp log level; 3 logs every request.")

    # --- conversations and the render queue
    conversation_ttl_seconds: int = Field(default=24 * 3600, ge=1)
    render_api_url: str = Field(default="", description="Base of the render status URLs /v1/generations returns.")
    playground: bool = Field(default=True, description="Serve the web playground at /.")
    playground_render_url: str = Field(
        default="", description="The render API's base URL as a browser reaches it; empty: render_api_url."
    )
    playground_default_size: str = Field(
        default="",
        pattern=r"^(\d{2,4}x\d{2,4})?$",
        description="WIDTHxHEIGHT the page's render form starts with; empty: Omost's 896x1152 (--tiny sets 256x256).",
    )
    job_ttl_seconds: int = Field(
        default=DEFAULT_TTL_SECONDS,
        ge=60,
        # The planner's older name stays: it queues *render* jobs, whose lifetime this is.
        validation_alias=AliasChoices("OMOST_PLANNER_RENDER_JOB_TTL_SECONDS", "OMOST_PLANNER_JOB_TTL_SECONDS"),
        description="Render jobs /v1/generations queues expire this long after they end.",
    )

    @model_validator(mode="after")
    def _one_queue_depth(self) -> PlannerSettings:
        # The planner's own depth setting is gone: with two, capping the render queue left
        # /v1/generations open. Refused rather than ignored, so a deployment that set it notices.
        if RETIRED_QUEUE_DEPTH in os.environ:
            raise ValueError(
                f"{RETIRED_QUEUE_DEPTH} is no longer read: the render queue's depth is one setting for every "
                "service, OMOST_QUEUE_MAX_DEPTH"
            )
        return self

    @property
    def render_job_ttl_seconds(self) -> int:
        """``job_ttl_seconds`` by its environment name (``OMOST_PLANNER_RENDER_JOB_TTL_SECONDS``)."""
        return self.job_ttl_seconds

    @property
    def embedded(self) -> bool:
        return not self.llm_url

    @property
    def grammar_kind(self) -> LLMKind:
        if self.llm_kind is not None:
            return self.llm_kind
        return "llamacpp" if self.embedded else "none"

    @property
    def model_name(self) -> str | None:
        """The model planned with: ``llm_model`` (the app sets it to the server's first model when
        unset), else the embedded GGUF's file name."""
        if self.llm_model:
            return self.llm_model
        if self.embedded:
            return self.gguf_path.name if self.gguf_path else SMOLLM2_FILE
        return None

    @property
    def small_model(self) -> bool:
        """The shaping defaults follow the model: a known small one (SmolLM2) gets the strict shaping
        wherever it is served, an Omost model the permissive one; an unknown model the one of its
        transport (strict embedded, where models are small; permissive served)."""
        name = (self.model_name or "").lower()
        if any(fragment in name for fragment in SMALL_MODELS):
            return True
        if any(fragment in name for fragment in OMOST_MODELS):
            return False
        return self.embedded

    @property
    def shaping_reason(self) -> str:
        """Why the defaults are what they are, for the start-up log."""
        name = self.model_name or "an unnamed model"
        lowered = name.lower()
        if any(fragment in lowered for fragment in SMALL_MODELS):
            return f"{name} is a known small model"
        if any(fragment in lowered for fragment in OMOST_MODELS):
            return f"{name} is an Omost model"
        return f"{name} is not a known model; defaults of the {'embedded' if self.embedded else 'served'} transport"

    @property
    def resolved_profile(self) -> Profile:
        if self.grammar_profile != "auto":
            return self.grammar_profile
        return "strict-content" if self.small_model else "permissive"

    @property
    def resolved_frequency_penalty(self) -> float:
        if self.frequency_penalty is not None:
            return self.frequency_penalty
        return EMBEDDED_FREQUENCY_PENALTY if self.small_model else 0.0

    @property
    def use_subject_constraints(self) -> bool:
        if self.grammar_kind == "none":
            return False  # nowhere to send a grammar
        return self.subject_constraints if self.subject_constraints is not None else self.small_model

    @property
    def default_max_new_tokens(self) -> int:
        """A request's max_new_tokens when it gives none: OMOST_PLANNER_MAX_NEW_TOKENS where set;
        else Omost's share of the window (4096 of 8192), for a small model at most
        :data:`SMALL_MODEL_MAX_NEW_TOKENS`."""
        if "max_new_tokens" in self.model_fields_set:
            return self.max_new_tokens
        share = max(16, self.max_new_tokens * self.context_tokens // int(LLM_DEFAULTS["context_tokens"]))
        tokens = min(self.max_new_tokens, share)
        return min(tokens, SMALL_MODEL_MAX_NEW_TOKENS) if self.small_model else tokens

    @property
    def use_one_shot(self) -> bool:
        return self.one_shot if self.one_shot is not None else self.small_model
