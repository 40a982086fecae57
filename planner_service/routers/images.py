"""OpenAI-compatible Images API: ``POST /v1/images/generations`` and ``GET /v1/models``.

Apps that already speak OpenAI's Images API (through its official SDK or anything modelled on it)
point their base URL here. A request plans a canvas, queues the render exactly as
``POST /v1/generations`` does, waits for the job (bounded by ``OMOST_PLANNER_IMAGES_TIMEOUT_SECONDS``)
and answers ``{created, data: [{b64_json | url, revised_prompt}]}``.

Errors on these routes only take OpenAI's shape, ``{"error": {message, type, param, code}}``, because
the SDK reads that shape into its exceptions; the rest of the API keeps its own. The conversion is a
route class local to this router, so no app-wide handler changes.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

from planner_service.admission import Admission, AdmissionDep
from planner_service.dependencies import PlanServiceDep, QueueDep, SettingsDep
from planner_service.image_waits import unless_gone, waiting_room
from planner_service.routers.generations import create_generation
from planner_service.schemas import GenerationRequest
from planner_service.service import PlanService
from planner_service.settings import PlannerSettings
from shared.contract import RENDER_DEFAULTS
from shared.jobs import MAX_IMAGES, RenderJob, RenderRequest
from shared.plans import MAX_PROMPT_CHARS
from shared.queue import JobRecord, RenderQueue, job_urls, render_job
from shared.service.auth import require_token
from shared.service.routing import StrictRoute

log = logging.getLogger(__name__)

MODEL_ID = "omost"
"""The one model these routes serve: an LLM-planned, region-controlled SDXL render."""

SIZE_PATTERN = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")
"""ASCII digits only (``\\d`` would take Arabic-Indic ones); matched whole (``fullmatch``: ``$`` alone lets a
trailing newline through)."""


class ImagesSettings(BaseSettings):
    """Settings of the Images API (prefix ``OMOST_PLANNER_IMAGES_``), kept beside the router they shape."""

    model_config = SettingsConfigDict(env_prefix="OMOST_PLANNER_IMAGES_", extra="ignore")

    timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest wait for the render; then 504 with the job's URL."
    )
    default_size: str = Field(
        default="1024x1024", pattern=SIZE_PATTERN.pattern, description="What size 'auto' (or no size) means."
    )
    steps: int = Field(default=RENDER_DEFAULTS["steps"], ge=1, le=150, description="Sampling steps per image.")
    max_waiting: int = Field(
        default=64, ge=1, le=100_000, description="Calls waiting for their renders at once, all replicas together; "
        "429 beyond (before planning)."
    )
    default_response_format: Literal["b64_json", "url"] = Field(
        default="b64_json", description="When the request names none: b64_json needs no second (authorised) fetch."
    )


# --- OpenAI's error shape ------------------------------------------------------------------------


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """Every error of the Images API, as OpenAI sends it."""

    error: OpenAIErrorDetail
    job: dict[str, str] | None = Field(default=None, description="On 504: the render job's id and status URL.")


class ImagesAPIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        job: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = OpenAIErrorDetail(message=message, type=type_, param=param, code=code)
        self.job = job


def _error_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def _error_response(
    status: int, detail: OpenAIErrorDetail, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = OpenAIErrorResponse(error=detail, **extra).model_dump(exclude_none=True)
    body["error"].setdefault("param", None)
    body["error"].setdefault("code", None)
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    """OpenAI answers a bad parameter with 400 naming it, not FastAPI's 422 list."""
    first: dict[str, Any] = dict(exc.errors()[0]) if exc.errors() else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":
        message = f"the body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}"
        return _error_response(400, OpenAIErrorDetail(message=message, type="invalid_request_error",
                                                      code="invalid_json"))
    loc = [part for part in first.get("loc", ()) if part != "body"]
    param = str(loc[0]) if loc and isinstance(loc[0], str) else None
    where = ".".join(str(part) for part in loc)
    message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
    detail = OpenAIErrorDetail(message=message, type="invalid_request_error", param=param, code="invalid_value")
    return _error_response(400, detail)


def _from_status(exc: Exception) -> JSONResponse:
    """A failure that knows its status (the services' ``http_status`` convention)."""
    status = int(getattr(exc, "http_status", 500))
    headers = dict(getattr(exc, "headers", None) or {})
    code = {401: "invalid_api_key", 502: "plan_failed"}.get(status)
    detail = OpenAIErrorDetail(message=str(exc), type=_error_type(status), code=code)
    return _error_response(status, detail, headers or None)


async def _reshape(request: Request, exc: Exception) -> Response:
    """Let the app's handler decide the status of any other failure (a Redis error, a bug), then
    re-dress its body."""
    handler = next((request.app.exception_handlers[k] for k in type(exc).__mro__
                    if k in request.app.exception_handlers), None)
    if handler is None:
        raise exc
    if not hasattr(exc, "http_status"):
        log.error("unexpected failure in %s", request.url.path, exc_info=exc)
    response: Response = await handler(request, exc)
    try:
        body = json.loads(bytes(response.body))
    except ValueError:
        body = {}
    message = str(body.get("detail") or body.get("title") or exc) if isinstance(body, dict) else str(exc)
    headers = {k: v for k, v in response.headers.items() if k.lower() == "retry-after"}
    detail = OpenAIErrorDetail(message=message, type=_error_type(response.status_code))
    return _error_response(response.status_code, detail, headers or None)


class OpenAIErrorRoute(StrictRoute):
    """The services' strict route (token before body, strict JSON), with every failure (validation, auth,
    planner, render) answered in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = await answer(request, exc)
            if response.status_code in (429, 503) and "retry-after" not in response.headers:
                # Every "try later" says when, whichever layer refused (queue full, plans in flight, LLM down).
                response.headers["Retry-After"] = str(request.app.state.settings.retry_after_seconds)
            return response

        async def answer(request: Request, exc: Exception) -> Response:
            if isinstance(exc, ImagesAPIError):
                job = {"job": exc.job} if exc.job else {}
                return _error_response(exc.status, exc.detail, **job)
            if isinstance(exc, RequestValidationError):
                return _validation_error(exc)
            if isinstance(exc, HTTPException):
                detail = OpenAIErrorDetail(message=str(exc.detail), type=_error_type(exc.status_code))
                return _error_response(exc.status_code, detail, dict(exc.headers) if exc.headers else None)
            if hasattr(exc, "http_status"):
                return _from_status(exc)
            return await _reshape(request, exc)

        return handle


# --- The API -------------------------------------------------------------------------------------


class ImageGenerationRequest(BaseModel):
    """OpenAI's ``images.generate`` body. Parameters that make no sense here are accepted and ignored
    (documented in docs/integrations.md) so apps written for OpenAI need no change."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = Field(default=None, max_length=256, description="Accepted and ignored: one model is served.")
    n: int | None = Field(default=None, ge=1, le=MAX_IMAGES, description="Images, one render job; 1 when null.")
    size: str | None = Field(default=None, max_length=16, description="'auto' or WxH (multiples of 8, 64-2048).")
    response_format: Literal["b64_json", "url"] | None = None
    quality: Literal["auto", "standard", "hd", "low", "medium", "high"] | None = Field(
        default=None, description="Accepted and ignored."
    )
    style: Literal["vivid", "natural"] | None = Field(default=None, description="Accepted and ignored.")
    user: str | None = Field(default=None, max_length=256, description="Accepted; not stored.")
    background: Literal["auto", "opaque"] | None = Field(default=None, description="Transparency is not offered.")
    output_format: Literal["png"] | None = Field(default=None, description="Images are PNG.")
    output_compression: int | None = Field(default=None, ge=0, le=100, description="Accepted and ignored (PNG).")
    moderation: Literal["auto", "low"] | None = Field(default=None, description="Accepted and ignored.")
    stream: Literal[False] | None = Field(default=None, description="Streaming partial images is not offered.")
    partial_images: int | None = Field(default=None, ge=0, le=0, description="Only 0 (no streaming).")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str = Field(description="The planned canvas's global description.")


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


def get_images_settings(request: Request) -> ImagesSettings:
    """Read once per app, at the first request (never at import)."""
    settings = getattr(request.app.state, "images_settings", None)
    if settings is None:
        settings = request.app.state.images_settings = ImagesSettings()
    return settings


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": OpenAIErrorResponse, "description": "A bad parameter (named in error.param)."},
    401: {"model": OpenAIErrorResponse, "description": "Missing or wrong bearer token."},
    404: {"model": OpenAIErrorResponse, "description": "Not found."},
    429: {"model": OpenAIErrorResponse, "description": "The render queue is full, too many calls wait for their "
          "renders, or the token's quota is used up; retry after `Retry-After` seconds."},
    502: {"model": OpenAIErrorResponse, "description": "The plan did not parse, or the render failed."},
    503: {"model": OpenAIErrorResponse, "description": "The LLM or Redis is unreachable."},
    504: {"model": OpenAIErrorResponse, "description": "The render outlasted the timeout; error.job has its URL."},
    500: {"model": OpenAIErrorResponse, "description": "A bug; the service log has the details."},
    # Declared only so that the document's generic 422 does not claim these routes send one.
    422: {"model": OpenAIErrorResponse, "description": "Not sent: a bad body is a 400, as OpenAI answers."},
}

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_token)], route_class=OpenAIErrorRoute)


def parse_size(size: str | None, default: str) -> tuple[int, int]:
    match = SIZE_PATTERN.fullmatch(default if size in (None, "auto") else size)
    if match is None:
        raise ImagesAPIError(400, f"size must be 'auto' or WIDTHxHEIGHT (e.g. 1024x1024); got {size!r}",
                             param="size", code="invalid_size")
    width, height = int(match[1]), int(match[2])
    try:
        RenderRequest.model_validate({"canvas": _ANY_CANVAS, "width": width, "height": height})
    except ValidationError as exc:
        reason = "; ".join(f"{e['loc'][0]} {e['msg']}" for e in exc.errors(include_url=False))
        raise ImagesAPIError(400, f"size {width}x{height} cannot be rendered: {reason}",
                             param="size", code="invalid_size") from None
    return width, height


_ANY_CANVAS = {"global_description": {"description": "size check", "HTML_web_color_name": "white"}}


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


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    responses=_ERRORS,
    response_model_exclude_none=True,
    operation_id="create_image",
    summary="Generate images (OpenAI-compatible)",
)
async def create_image(
    body: ImageGenerationRequest,
    service: PlanServiceDep,
    settings: SettingsDep,
    queue: QueueDep,
    images: Annotated[ImagesSettings, Depends(get_images_settings)],
    admission: AdmissionDep,
    request: Request,
) -> ImagesResponse:
    """Plan a canvas from the prompt, render ``n`` images of it and wait for them."""
    width, height = parse_size(body.size, images.default_size)
    n = body.n or 1
    render = {"width": width, "height": height, "num_images": n, "steps": images.steps}
    # The same path as POST /v1/generations: the same validation, plan, queue and error mapping.
    if not body.prompt.strip():  # "\x1d" passes min_length, but a plan needs words (found by schemathesis)
        raise ImagesAPIError(400, "the prompt is empty (only whitespace)", param="prompt")
    generation = GenerationRequest(prompt=body.prompt, render=render)
    # A place to wait in first: a call that could not wait must not spend a plan.
    waiting = await waiting_room(request, images.max_waiting).admit()
    try:
        return await _generate(body, generation, service, settings, queue, images, admission, request, n)
    finally:
        await waiting.release()


async def _generate(
    body: ImageGenerationRequest,
    generation: GenerationRequest,
    service: PlanService,
    settings: PlannerSettings,
    queue: RenderQueue,
    images: ImagesSettings,
    admission: Admission,
    request: Request,
    n: int,
) -> ImagesResponse:
    accepted = await create_generation(generation, service, settings, queue, admission, request)
    try:
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
        if (body.response_format or images.default_response_format) == "url":
            urls = job_urls(job.id, n, settings.render_api_url).images
            data = [ImageData(url=url, revised_prompt=revised) for url in urls]
        else:
            pngs = [await read_png(queue, record, i) for i in range(n)]
            data = [ImageData(b64_json=base64.b64encode(p).decode("ascii"), revised_prompt=revised) for p in pngs]
    except RedisError as exc:
        raise ImagesAPIError(503, f"the render store (Redis) is unavailable: {exc}", type_="server_error") from exc
    return ImagesResponse(created=int(time.time()), data=data)


@router.get("/models", response_model=ModelList, responses={k: _ERRORS[k] for k in (401, 500)},
            operation_id="list_models")
async def list_models() -> ModelList:
    """The model(s) ``POST /v1/images/generations`` serves (OpenAI's list shape)."""
    return ModelList(data=[Model(id=MODEL_ID, created=0, owned_by="omost-service")])
