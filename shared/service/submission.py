"""Submitting a render from a service: the one path both the render API (``POST /v1/renders``) and the
planner (``POST /v1/generations``, ``/v1/images/generations``) take. Admission itself (work budget,
queue depth, idempotency, the submitter) is the queue's submit script; here its refusal over budget
becomes the 422 both services answer, naming the field and the setting, and the request is fitted to
the model it names (:func:`fit_model`): a model no worker serves, or an option it lacks, is a 422 too."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from opentelemetry.trace import SpanKind

from shared.jobs import DEFAULT_MODEL, RenderRequest, SamplingParams, megapixel_steps
from shared.models import ModelMismatch, RequestT, fit_request
from shared.queue import OverBudget, QuotaExceeded, RenderQueue, SubmitQuota, Submitted
from shared.service.tokens import Quota
from shared.service.tracing import current_trace_context, record_error, request_attributes, tracer


def _refusal(queue: RenderQueue, exc: OverBudget, loc: tuple[str, ...]) -> RequestValidationError:
    error = {"type": "work_budget", "loc": loc, "msg": f"{exc.reason} ({queue.settings.budget_setting})"}
    return RequestValidationError([error])


def check_budget(queue: RenderQueue, request: SamplingParams, *, loc: tuple[str, ...] = ("body",)) -> None:
    """422 now for a job the queue would refuse (before work that would be wasted on it, e.g. a plan)."""
    try:
        queue.check_budget(request)
    except OverBudget as exc:
        raise _refusal(queue, exc, loc) from None


async def check_quota(queue: RenderQueue, request: SamplingParams, *, submitter: str, quota: Quota | None) -> None:
    """429 now when ``submitter``'s own quota would refuse the job (before work that would be wasted on it,
    e.g. a plan). Only a hint, as :meth:`RenderQueue.check_depth`: the submit script checks again, atomically."""
    if quota is None or (quota.megapixel_steps_per_hour is None and quota.max_concurrent_jobs is None):
        return
    work, active = await queue.usage(submitter)
    hourly, at_once = quota.megapixel_steps_per_hour, quota.max_concurrent_jobs
    if hourly is not None and work + megapixel_steps(request) > hourly:
        raise QuotaExceeded.work(hourly, work)
    if at_once is not None and active >= at_once:
        raise QuotaExceeded.jobs(active, at_once)


async def fit_model(queue: RenderQueue, request: RequestT, *, loc: tuple[str, ...] = ("body",)) -> RequestT:
    """``request`` with its model's defaults for what it left unset (:func:`shared.models.fit_request`);
    422 when no worker serves the model it names or the model cannot do what it asks.

    A request for the default model is taken as it is while no model at all is registered (a
    deployment whose workers have not started yet, or a client enqueuing through plain Redis)."""
    name = request.model or DEFAULT_MODEL
    info = await queue.model(name)  # one round trip at most (RenderQueue.model)
    if info is None:
        # The rare path: read the whole registry, for the error's list of what is served (and a model
        # registered between the two reads is taken after all).
        served = await queue.models()
        info = next((m for m in served if m.name == name), None)
        if info is None:
            if name == DEFAULT_MODEL and not served:
                return request
            names = ", ".join(m.name for m in served) or "none"
            msg = f"no worker serves model {name!r} (served here: {names}; GET /v1/models lists them)"
            raise RequestValidationError([{"type": "model_not_served", "loc": (*loc, "model"), "msg": msg}])
    try:
        return fit_request(request, info)
    except ModelMismatch as exc:
        errors = [{"type": "model_option", "loc": (*loc, field), "msg": msg} for field, msg in exc.errors]
        raise RequestValidationError(errors) from None


async def submit_render(
    queue: RenderQueue,
    request: RenderRequest,
    *,
    submitter: str,
    idempotency_key: str | None = None,
    webhook_url: str | None = None,
    quota: Quota | None = None,
    loc: tuple[str, ...] = ("body",),
) -> Submitted:
    """Queue ``request`` in ``submitter``'s name (within its ``quota``, a named token's), fitted to its
    model (:func:`fit_model`); 422 over budget or for a model that cannot take it, and the queue's
    429 / 409 as they are.

    The ``render submit`` span's context travels in the queue message: the worker's spans are its children."""
    request = await fit_model(queue, request, loc=loc)
    limits = SubmitQuota(quota.megapixel_steps_per_hour, quota.max_concurrent_jobs) if quota else None
    with tracer.start_as_current_span(
        "render submit", kind=SpanKind.PRODUCER, attributes=request_attributes(request), record_exception=False
    ) as span:
        try:
            submitted = await queue.submit(
                request,
                submitter=submitter,
                idempotency_key=idempotency_key,
                webhook_url=webhook_url,
                quota=limits,
                trace_context=current_trace_context(),
            )
        except OverBudget as exc:
            record_error(span, exc, "work_budget")
            raise _refusal(queue, exc, loc) from None
        except Exception as exc:
            record_error(span, exc, type(exc).__name__)
            raise
        span.set_attribute("omost.job.id", submitted.job_id)
        span.set_attribute("omost.job.replayed", not submitted.created)
        return submitted
