"""The models a deployment serves, as workers register them and ``GET /v1/models`` lists them, and
how a render request is fitted to the model it names (that model's defaults for the fields left
unset; a clear refusal for what the model cannot do). No Redis here: :mod:`shared.queue.models` stores them."""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, Field

from shared.jobs import DEFAULT_MODEL, MODEL_NAME_PATTERN, SamplingParams

RequestT = TypeVar("RequestT", bound=SamplingParams)

__all__ = ["ModelInfo", "ModelList", "ModelMismatch", "fit_request"]

ModelOption = Literal["negative_prompt", "hires_fix", "initial_latent_strength", "flux"]
"""Optional request fields a model may or may not take."""


class ModelInfo(BaseModel):
    """One served model: what its workers registered (refreshed by their heartbeats)."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="What a request's `model` names.")
    family: Literal["sdxl", "flux"]
    variant: str | None = Field(default=None, description="Flux: `dev` (guidance embedded) or `schnell`.")
    source: str = Field(description="The checkpoint the workers loaded (hub id, folder or file).")
    default_steps: int
    default_guidance_scale: float
    default_sampler: str
    samplers: list[str]
    size_multiple: int = Field(description="Width and height must be multiples of this (8 SDXL, 16 Flux).")
    options: list[ModelOption] = Field(description="Optional request fields this model takes.")
    workers: int = Field(default=0, description="Live workers serving it now (0: none beat lately).")
    last_seen: float = Field(default=0.0, description="Unix time of the last registration.")


class ModelList(BaseModel):
    """The answer to ``GET /v1/models``."""

    default: str = Field(default=DEFAULT_MODEL, description="The name a request without `model` gets.")
    models: list[ModelInfo]


class ModelMismatch(ValueError):
    """A request asks a model for something it does not do: ``errors`` as pydantic's (loc, msg)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in errors))
        self.errors = errors


_OPTION_UNSET = {"negative_prompt": "", "hires_fix": None, "initial_latent_strength": None, "flux": None}


def fit_request(request: RequestT, info: ModelInfo) -> RequestT:
    """``request`` with ``info``'s defaults for steps, guidance and sampler where the client left them
    unset; raises :class:`ModelMismatch` naming every field the model cannot take."""
    unset = {
        "steps": info.default_steps,
        "guidance_scale": info.default_guidance_scale,
        "sampler": info.default_sampler,
    }
    updates = {name: value for name, value in unset.items() if name not in request.model_fields_set}
    fitted = request.model_copy(update=updates) if updates else request
    errors: list[tuple[str, str]] = []
    if fitted.sampler not in info.samplers:
        errors.append(
            ("sampler", f"model {info.name!r} ({info.family}) takes {', '.join(info.samplers)}; got {fitted.sampler!r}")
        )
    for side in ("width", "height"):
        value = getattr(fitted, side)
        if value % info.size_multiple:
            errors.append(
                (side, f"model {info.name!r} ({info.family}) needs multiples of {info.size_multiple}; got {value}")
            )
    for option, unset_value in _OPTION_UNSET.items():
        given = getattr(fitted, option)
        # The negative prompt has a default text: only one the client set counts as asked for.
        asked = given != unset_value and (option != "negative_prompt" or option in request.model_fields_set)
        if asked and option not in info.options:
            errors.append((option, f"model {info.name!r} ({info.family}) does not take {option}"))
    if errors:
        raise ModelMismatch(errors)
    return fitted
