"""What ``POST /v1/images/generations`` does: plan a canvas from the prompt, queue ``n`` images of it
exactly as ``POST /v1/generations`` does, wait for the job (bounded by
``OMOST_PLANNER_IMAGES_TIMEOUT_SECONDS``) and answer the images inline (``b64_json``, from whichever
image store holds them) or as the render API's URLs."""

from __future__ import annotations

import base64
import time
from typing import Literal

from fastapi import Request
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError

from planner_service.generation import Generations
from planner_service.image_waits import unless_gone, waiting_room
from planner_service.images.protocol import (
    MODEL_ID,
    OPENAI_MODELS,
    SIZE_PATTERN,
    ImageData,
    ImageGenerationRequest,
    ImagesAPIError,
    ImagesResponse,
)
from shared.contract import RENDER_DEFAULTS
from shared.jobs import MAX_STEPS, RenderJob, SamplingParams
from shared.plans import GenerationAccepted, GenerationRequest
from shared.queue import JobRecord, RenderQueue, job_urls, render_job
from shared.service.submission import fit_model


class ImagesSettings(BaseSettings):
    """Settings of the Images API (prefix ``OMOST_PLANNER_IMAGES_``), kept beside the logic they shape."""

    model_config = SettingsConfigDict(env_prefix="OMOST_PLANNER_IMAGES_", extra="ignore")

    timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest wait for the render; then 504 with the job's URL."
    )
    default_size: str = Field(
        default="1024x1024", pattern=SIZE_PATTERN.pattern, description="What size 'auto' (or no size) means."
    )
    steps: int = Field(default=RENDER_DEFAULTS["steps"], ge=1, le=MAX_STEPS, description="Sampling steps per image.")
    max_waiting: int = Field(
        default=64,
        ge=1,
        le=100_000,
        description="Calls waiting for their renders at once, all replicas together; 429 beyond (before planning).",
    )
    default_response_format: Literal["b64_json", "url"] = Field(
        default="b64_json", description="When the request names none: b64_json needs no second (authorised) fetch."
    )


def parse_size(size: str | None, default: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` (or ``auto``/none: ``default``) as a size the renderer takes; else a 400 naming it."""
    match = SIZE_PATTERN.fullmatch(default if size in (None, "auto") else size)
    if match is None:
        raise ImagesAPIError(400, f"size must be 'auto' or WIDTHxHEIGHT (e.g. 1024x1024); got {size!r}",
                             param="size", code="invalid_size")
    width, height = int(match[1]), int(match[2])
    try:
        SamplingParams(width=width, height=height)
    except ValidationError as exc:
        reason = "; ".join(f"{e['loc'][0]} {e['msg']}" for e in exc.errors(include_url=False))
        raise ImagesAPIError(400, f"size {width}x{height} cannot be rendered: {reason}",
                             param="size", code="invalid_size") from None
    return width, height


async def wait_for_job(queue: RenderQueue, job_id: str, timeout: float) -> tuple[JobRecord, RenderJob] | None:
    """The job once it has ended, or None if it is still going after ``timeout`` seconds."""
    record = await queue.wait(job_id, timeout)
    return (record, render_job(record)) if record is not None else None


async def read_png(queue: RenderQueue, record: JobRecord, index: int) -> bytes:
    """Image ``index`` of a succeeded job, from whichever image store holds it (Redis or S3)."""
    data = await queue.image_bytes(record, index)
    if data is None:
        raise ImagesAPIError(502, f"image {index} of render job {record.id} is missing", type_="server_error",
                             code="image_missing")
    return data


async def _sampling(
    body: ImageGenerationRequest, width: int, height: int, n: int, images: ImagesSettings, queue: RenderQueue
) -> SamplingParams:
    """The render's parameters: the default model with the configured steps, or a named render model with its own
    defaults (4 steps on Flux schnell); a model no worker serves, or not at this size, is a 400 naming it."""
    if body.model is None or body.model == MODEL_ID or body.model.startswith(OPENAI_MODELS):
        return SamplingParams(width=width, height=height, num_images=n, steps=images.steps)
    try:
        render = SamplingParams(width=width, height=height, num_images=n, model=body.model)
    except ValidationError as exc:
        raise ImagesAPIError(400, f"model {body.model!r}: {exc.errors()[0]['msg']}", param="model") from None
    await fit_model(queue, render)  # ("body", "model") in the 422, which the route turns into a 400 naming it
    return render


async def create_images(
    body: ImageGenerationRequest, images: ImagesSettings, generations: Generations, request: Request
) -> ImagesResponse:
    """Plan a canvas from the prompt, render ``n`` images of it and wait for them."""
    width, height = parse_size(body.size, images.default_size)
    n = body.n or 1
    if not body.prompt.strip():  # "\x1d" passes min_length, but a plan needs words (found by schemathesis)
        raise ImagesAPIError(400, "the prompt is empty (only whitespace)", param="prompt")
    render = await _sampling(body, width, height, n, images, generations.queue)
    # A place to wait in first: a call that could not wait must not spend a plan.
    waiting = await waiting_room(request, images.max_waiting).admit()
    try:
        # The same path as POST /v1/generations: the same validation, plan, queue and error mapping.
        accepted = await generations.generate(GenerationRequest(prompt=body.prompt, render=render), request)
        try:
            data = await _images(body, images, generations, accepted, request)
        except RedisError as exc:
            raise ImagesAPIError(
                503, f"the render store (Redis) is unavailable: {exc}", type_="server_error"
            ) from exc
    finally:
        await waiting.release()
    return ImagesResponse(created=int(time.time()), data=data)


async def _images(
    body: ImageGenerationRequest,
    images: ImagesSettings,
    generations: Generations,
    accepted: GenerationAccepted,
    request: Request,
) -> list[ImageData]:
    queue = generations.queue
    # A client that hangs up (an SDK's timeout) cancels its job rather than leaving it to render.
    ended = await unless_gone(request, queue, accepted.id, wait_for_job(queue, accepted.id, images.timeout_seconds))
    if ended is None:
        url = accepted.urls.self_
        raise ImagesAPIError(
            504,
            f"render job {accepted.id} did not finish within {images.timeout_seconds:g} s; poll {url}",
            type_="server_error",
            code="render_timeout",
            job={"id": accepted.id, "url": url},
        )
    record, job = ended
    if job.status != "succeeded":
        raise ImagesAPIError(502, f"render job {job.id} ended {job.status}: {job.error or 'no reason given'}",
                             type_="server_error", code="render_failed")
    revised = accepted.canvas.global_description.description
    n = body.n or 1
    if (body.response_format or images.default_response_format) == "url":
        urls = job_urls(job.id, n, generations.settings.render_api_url).images
        return [ImageData(url=url, revised_prompt=revised) for url in urls]
    pngs = [await read_png(queue, record, i) for i in range(n)]
    return [ImageData(b64_json=base64.b64encode(p).decode("ascii"), revised_prompt=revised) for p in pngs]
