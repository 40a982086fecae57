"""The read side's views of a job: the render API's ``RenderJob`` and its URLs (``/v1/renders/{id}``).

Here, not in the API, because the planner answers with the same URLs (it queues into the same API's
queue but never imports the render service)."""

from __future__ import annotations

from shared.jobs import Progress, RenderJob, RenderJobUrls
from shared.queue.record import JobRecord


def job_urls(job_id: str, num_images: int, base_url: str = "") -> RenderJobUrls:
    base = f"{base_url.rstrip('/')}/v1/renders/{job_id}"
    return RenderJobUrls(self_=base, events=f"{base}/events", images=[f"{base}/images/{n}" for n in range(num_images)])


_AS_RECORDED = (
    "id", "status", "created_at", "started_at", "finished_at", "timings", "error", "seeds", "model", "device",
    "worker", "deliveries", "cancel_requested",
)  # fmt: skip
"""The :class:`RenderJob` fields that are the record's own, under the same names."""


def render_job(record: JobRecord, base_url: str = "") -> RenderJob:
    """The API's view of a job record."""
    num_images = record.num_images if record.status == "succeeded" else 0
    progress = None
    if record.progress_total:
        progress = Progress(step=record.progress_step, total=record.progress_total)
    return RenderJob(
        **{name: getattr(record, name) for name in _AS_RECORDED},
        progress=progress,
        num_images=num_images,
        webhook=record.webhook_status,
        webhook_attempts=record.webhook_attempts,
        urls=job_urls(record.id, num_images, base_url),
        request=record.request,
    )
