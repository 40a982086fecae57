"""A typed HTTP client for both services, synchronous (``OmostClient``) and asynchronous
(``AsyncOmostClient``).

Both build the same ``httpx.Request`` objects (``_Requests``) and parse the same models; only the
sending differs, so the two cannot drift apart. The CLI uses the synchronous one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urljoin

import httpx
from httpx_sse import EventSource, ServerSentEvent

from shared.canvas import Canvas
from shared.jobs import (
    TERMINAL_STATUSES,
    JobEvent,
    RenderAccepted,
    RenderJob,
    RenderRequest,
    RenderSubmission,
    SamplingParams,
)
from shared.plans import ChatTurn, GenerationAccepted, PlanEvent, PlanResult, read_plan_event

ProgressCallback = Callable[[RenderJob], None]


class OmostAPIError(Exception):
    """A service answered with an error status. The message is the problem's ``detail`` as the
    service wrote it (both services answer RFC 9457 problem details); ``errors`` lists the fields
    of a 422, ``body`` is the whole answer."""

    def __init__(self, status_code: int, detail: str, body: Any = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.body = body
        self.errors: list[dict[str, Any]] = list(body.get("errors") or []) if isinstance(body, dict) else []


class RenderFailed(Exception):
    """A waited-for job ended ``failed`` or ``canceled``."""

    def __init__(self, job: RenderJob) -> None:
        super().__init__(f"render {job.id} ended {job.status}: {job.error or 'no reason given'}")
        self.job = job


def _raise_for_error(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        body = response.json()  # application/problem+json is JSON too
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:  # not from our services (a proxy's HTML page, say)
        body = response.text
        detail = f"HTTP {response.status_code}: {response.text or response.reason_phrase}"
    raise OmostAPIError(response.status_code, str(detail), body)


def _event(sse: ServerSentEvent) -> JobEvent | None:
    return JobEvent.model_validate_json(sse.data) if sse.data else None


def _is_last(event: JobEvent) -> bool:
    return event.type == "status" and event.status in TERMINAL_STATUSES


def poll_delays(first: float = 0.2, factor: float = 1.5, cap: float = 2.0) -> Iterator[float]:
    """Polling backoff: quick at first (short jobs), then at most every ``cap`` seconds."""
    delay = first
    while True:
        yield delay
        delay = min(cap, delay * factor)


def _http_options(token: str | None, timeout: float) -> dict[str, Any]:
    """Headers and timeouts both clients share. Planning on a CPU can take minutes; connecting should not."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"headers": headers, "timeout": httpx.Timeout(timeout, connect=10.0)}


class _Requests:
    """Builds every request both clients send; holds the base URLs and the token."""

    def __init__(self, planner_url: str | None, render_url: str | None) -> None:
        self.planner_url = planner_url.rstrip("/") + "/" if planner_url else None
        self.render_url = render_url.rstrip("/") + "/" if render_url else None

    def planner(self, path: str) -> str:
        if self.planner_url is None:
            raise ValueError("this client has no planner_url")
        return urljoin(self.planner_url, path)

    def render(self, path: str) -> str:
        """An absolute URL; paths the API returned may already be absolute."""
        if path.startswith(("http://", "https://")):
            return path
        if self.render_url is None:
            raise ValueError("this client has no render_url")
        return urljoin(self.render_url, path.lstrip("/"))

    @staticmethod
    def plan_body(
        prompt: str,
        *,
        history: list[ChatTurn] | None = None,
        conversation_id: str | None = None,
        canvas: Canvas | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"prompt": prompt, **{k: v for k, v in options.items() if v is not None}}
        if history:
            body["history"] = [turn.model_dump() for turn in history]
        if conversation_id:
            body["conversation_id"] = conversation_id
        if canvas is not None:
            body["canvas"] = canvas.model_dump(mode="json")
        return body

    @staticmethod
    def generation_body(prompt: str, render: SamplingParams | dict[str, Any] | None, **options: Any) -> dict[str, Any]:
        """The body of ``POST /v1/generations``: the plan's fields plus how to sample its canvas."""
        body = _Requests.plan_body(prompt, **options)
        if isinstance(render, SamplingParams):
            body["render"] = render.model_dump(mode="json", exclude_unset=True)  # unset: the model's default
        elif render:
            body["render"] = render
        return body

    def job(self, job_id_or_url: str) -> str:
        return self.render(job_id_or_url if "/" in job_id_or_url else f"v1/renders/{job_id_or_url}")

    @staticmethod
    def submission(request: RenderRequest, idempotency_key: str | None, webhook_url: str | None) -> dict[str, Any]:
        """The body and headers of ``POST /v1/renders``."""
        # exclude_unset: what the caller left unset stays so, and the served model's defaults fill it
        # (a Flux model's steps, guidance and sampler differ from SDXL's).
        body = request.model_dump(mode="json", exclude_unset=True)
        if webhook_url:
            body = RenderSubmission(**body, webhook_url=webhook_url).model_dump(mode="json", exclude_unset=True)
        return {"json": body, "headers": {"Idempotency-Key": idempotency_key} if idempotency_key else {}}


class _Waiting:
    """What ``wait`` does with each polled job, and when it gives up."""

    def __init__(self, timeout: float, on_progress: ProgressCallback | None) -> None:
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.on_progress = on_progress

    def ended(self, job: RenderJob, delay: float) -> bool:
        """Report ``job``; True once it has succeeded (``RenderFailed`` if it ended otherwise).
        Raises ``TimeoutError`` where the next poll, ``delay`` seconds on, would come too late."""
        if self.on_progress:
            self.on_progress(job)
        if job.status in TERMINAL_STATUSES:
            if job.status != "succeeded":
                raise RenderFailed(job)
            return True
        if time.monotonic() + delay > self.deadline:
            raise TimeoutError(f"render {job.id} still {job.status} after {self.timeout} s")
        return False


class OmostClient:
    """Synchronous client. ``planner_url`` / ``render_url`` are the services' base URLs."""

    def __init__(
        self,
        planner_url: str | None = None,
        render_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._urls = _Requests(planner_url, render_url)
        self._http = httpx.Client(**_http_options(token, timeout), transport=transport)

    def __enter__(self) -> OmostClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return _raise_for_error(self._http.request(method, url, **kwargs)).json()

    # --- planner
    def plan(self, prompt: str, **options: Any) -> PlanResult:
        body = _Requests.plan_body(prompt, **options)
        return PlanResult.model_validate(self._json("POST", self._urls.planner("v1/plans"), json=body))

    def stream_plan(self, prompt: str, **options: Any) -> Iterator[PlanEvent]:
        """The plan as it is written (``shared.plans``: ``PlanDelta``, ``PlanRetry``), then its
        ``PlanResult`` or the ``PlanError`` that ended it."""
        body = {**_Requests.plan_body(prompt, **options), "stream": True}
        with self._http.stream("POST", self._urls.planner("v1/plans"), json=body) as response:
            if not response.is_success:
                response.read()
                _raise_for_error(response)
            for sse in EventSource(response).iter_sse():
                if (event := read_plan_event(sse.event, sse.data)) is not None:
                    yield event

    def generate(
        self, prompt: str, *, render: SamplingParams | dict[str, Any] | None = None, **options: Any
    ) -> GenerationAccepted:
        """Plan and queue the render in one call; ``render`` says how to sample (width, steps, ...)."""
        body = _Requests.generation_body(prompt, render, **options)
        return GenerationAccepted.model_validate(self._json("POST", self._urls.planner("v1/generations"), json=body))

    # --- renders
    def submit(
        self, request: RenderRequest, *, idempotency_key: str | None = None, webhook_url: str | None = None
    ) -> RenderAccepted:
        submission = _Requests.submission(request, idempotency_key, webhook_url)
        data = self._json("POST", self._urls.render("v1/renders"), **submission)
        return RenderAccepted.model_validate(data)

    def get(self, job_id_or_url: str) -> RenderJob:
        return RenderJob.model_validate(self._json("GET", self._urls.job(job_id_or_url)))

    def cancel(self, job_id: str) -> RenderJob:
        return RenderJob.model_validate(self._json("DELETE", self._urls.render(f"v1/renders/{job_id}")))

    def wait(
        self, job_id_or_url: str, *, timeout: float = 3600.0, on_progress: ProgressCallback | None = None
    ) -> RenderJob:
        """Poll until the job ends; raises ``RenderFailed`` unless it succeeded, ``TimeoutError`` if slow."""
        waiting = _Waiting(timeout, on_progress)
        for delay in poll_delays():
            job = self.get(job_id_or_url)
            if waiting.ended(job, delay):
                return job
            time.sleep(delay)
        raise AssertionError("unreachable")

    def events(self, job_id: str) -> Iterator[JobEvent]:
        """The job's events (history first, then live) until it ends."""
        with self._http.stream("GET", self._urls.render(f"v1/renders/{job_id}/events")) as response:
            if not response.is_success:
                response.read()
                _raise_for_error(response)
            for sse in EventSource(response).iter_sse():
                if event := _event(sse):
                    yield event
                    if _is_last(event):
                        return

    def image(self, job: RenderJob, index: int = 0) -> bytes:
        """PNG bytes of image ``index`` of a succeeded job."""
        # The S3 image store answers 302 to a presigned URL; httpx drops the token on that cross-origin hop.
        response = self._http.get(self._urls.render(job.urls.images[index]), follow_redirects=True)
        return _raise_for_error(response).content


class AsyncOmostClient:
    """Asynchronous twin of :class:`OmostClient` (same methods, awaited)."""

    def __init__(
        self,
        planner_url: str | None = None,
        render_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float = 600.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._urls = _Requests(planner_url, render_url)
        self._http = httpx.AsyncClient(**_http_options(token, timeout), transport=transport)

    async def __aenter__(self) -> AsyncOmostClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        return _raise_for_error(await self._http.request(method, url, **kwargs)).json()

    async def plan(self, prompt: str, **options: Any) -> PlanResult:
        body = _Requests.plan_body(prompt, **options)
        return PlanResult.model_validate(await self._json("POST", self._urls.planner("v1/plans"), json=body))

    async def stream_plan(self, prompt: str, **options: Any) -> AsyncIterator[PlanEvent]:
        body = {**_Requests.plan_body(prompt, **options), "stream": True}
        async with self._http.stream("POST", self._urls.planner("v1/plans"), json=body) as response:
            if not response.is_success:
                await response.aread()
                _raise_for_error(response)
            async for sse in EventSource(response).aiter_sse():
                if (event := read_plan_event(sse.event, sse.data)) is not None:
                    yield event

    async def generate(
        self, prompt: str, *, render: SamplingParams | dict[str, Any] | None = None, **options: Any
    ) -> GenerationAccepted:
        body = _Requests.generation_body(prompt, render, **options)
        data = await self._json("POST", self._urls.planner("v1/generations"), json=body)
        return GenerationAccepted.model_validate(data)

    async def submit(
        self, request: RenderRequest, *, idempotency_key: str | None = None, webhook_url: str | None = None
    ) -> RenderAccepted:
        submission = _Requests.submission(request, idempotency_key, webhook_url)
        data = await self._json("POST", self._urls.render("v1/renders"), **submission)
        return RenderAccepted.model_validate(data)

    async def get(self, job_id_or_url: str) -> RenderJob:
        return RenderJob.model_validate(await self._json("GET", self._urls.job(job_id_or_url)))

    async def cancel(self, job_id: str) -> RenderJob:
        return RenderJob.model_validate(await self._json("DELETE", self._urls.render(f"v1/renders/{job_id}")))

    async def wait(
        self, job_id_or_url: str, *, timeout: float = 3600.0, on_progress: ProgressCallback | None = None
    ) -> RenderJob:
        waiting = _Waiting(timeout, on_progress)
        for delay in poll_delays():
            job = await self.get(job_id_or_url)
            if waiting.ended(job, delay):
                return job
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def events(self, job_id: str) -> AsyncIterator[JobEvent]:
        async with self._http.stream("GET", self._urls.render(f"v1/renders/{job_id}/events")) as response:
            if not response.is_success:
                await response.aread()
                _raise_for_error(response)
            async for sse in EventSource(response).aiter_sse():
                if event := _event(sse):
                    yield event
                    if _is_last(event):
                        return

    async def image(self, job: RenderJob, index: int = 0) -> bytes:
        response = await self._http.get(self._urls.render(job.urls.images[index]), follow_redirects=True)
        return _raise_for_error(response).content
