"""What the user sees on stderr: progress during every wait, canvases, results and edit summaries.

On a terminal waits are a rich live line; when stderr is a pipe or a file they are a plain line
every few seconds, and nothing is cut or wrapped at 80 columns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.canvas import Canvas
from shared.client import OmostAPIError
from shared.jobs import RenderJob
from shared.plans import CanvasChanges, PlanDelta, PlanEvent, PlanResult, PlanRetry

PLAIN_EVERY_SECONDS = 5.0
FIRST_LINE_AFTER_SECONDS = 1.0


def say(console: Console, text: str) -> None:
    """One message; off a terminal it is never wrapped (a log line stays one line)."""
    console.print(text, soft_wrap=not console.is_terminal, highlight=False)


class Activity:
    """A wait the user should see. ``update`` says what is happening; time elapsed is added."""

    def __init__(self, console: Console, label: str, *, plain_every: float = PLAIN_EVERY_SECONDS) -> None:
        self.console = console
        self.label = label
        self.plain_every = plain_every
        self.detail = ""
        self._started = time.monotonic()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._progress: Progress | None = None
        self._task: Any = None
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Activity:
        self._started = time.monotonic()
        if self.console.is_terminal:
            columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
            self._progress = Progress(*columns, console=self.console, transient=True)
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=None)
        else:
            self._ticker = threading.Thread(target=self._plain_lines, name="progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        if self._progress is not None:
            self._progress.stop()
        if self._ticker is not None:
            self._ticker.join()

    def update(self, detail: str, *, completed: int | None = None, total: int | None = None) -> None:
        with self._lock:
            self.detail = detail
        if self._progress is not None:
            description = f"{self.label}: {detail}" if detail else self.label
            self._progress.update(self._task, description=description, completed=completed or 0, total=total)

    def _plain_lines(self) -> None:
        # The first line after a second (short waits stay silent), then one every few seconds.
        if self._done.wait(FIRST_LINE_AFTER_SECONDS):
            return
        while True:
            with self._lock:
                detail = self.detail
            elapsed = time.monotonic() - self._started
            say(self.console, f"{self.label}: {detail + ', ' if detail else ''}{elapsed:.0f} s")
            if self._done.wait(self.plain_every):
                return


def plan_with_progress(console: Console, events: Iterator[PlanEvent], label: str = "planning") -> PlanResult:
    """Follow the planner's stream (``OmostClient.stream_plan``), showing tokens and tokens/s; return the plan."""
    with Activity(console, label) as activity:
        tokens = 0
        first_token = 0.0
        for event in events:
            if isinstance(event, PlanDelta):
                tokens += 1  # llama.cpp and vLLM stream one token per delta
                now = time.monotonic()
                first_token = first_token or now
                rate = f", {(tokens - 1) / (now - first_token):.1f} tokens/s" if now > first_token else ""
                activity.update(f"{tokens} tokens{rate}")
            elif isinstance(event, PlanRetry):
                tokens, first_token = 0, 0.0
                activity.update("the answer did not parse; trying again")
            elif isinstance(event, PlanResult):
                return event
            else:
                raise OmostAPIError(event.status, event.detail, event.model_dump())
    raise OmostAPIError(502, "the planner's stream ended without a plan")


def render_with_progress(console: Console, wait: Callable[..., RenderJob], status_url: str) -> RenderJob:
    """``wait(status_url, on_progress=...)`` with the queue place while queued and the step while running."""
    with Activity(console, "render") as activity:

        def update(job: RenderJob) -> None:
            if job.status == "queued":
                place = getattr(job, "queue_position", None)
                ahead = f": {place - 1} job(s) ahead" if place and place > 1 else (": next" if place == 1 else "")
                activity.update(f"queued{ahead}")
            elif job.progress and job.progress.total:
                step = f"step {job.progress.step}/{job.progress.total}"
                activity.update(step, completed=job.progress.step, total=job.progress.total)
            else:
                activity.update(job.status)

        return wait(status_url, on_progress=update)


def show_canvas(console: Console, canvas: Canvas) -> None:
    regions = canvas.local_descriptions
    if not console.is_terminal:
        say(console, f"canvas: {escape(canvas.global_description.description)}")
        for i, r in enumerate(regions):
            say(console, f"  region {i}: {r.location}, {r.offset}, {r.area}, distance {r.distance_to_viewer:g}, "
                         f"{r.HTML_web_color_name}: {escape(r.description)}")
        return
    table = Table(title=canvas.global_description.description, title_justify="left")
    for column in ("#", "location", "offset", "area", "distance", "colour", "description"):
        table.add_column(column)
    for i, r in enumerate(regions):
        row = (str(i), r.location, r.offset, r.area, f"{r.distance_to_viewer:g}", r.HTML_web_color_name, r.description)
        table.add_row(*row)
    console.print(table)


def show_corrections(console: Console, plan: PlanResult) -> None:
    for c in plan.corrections:
        say(console, f"[yellow]corrected line {c.line}: {c.field} {escape(repr(c.original))} -> "
                     f"{escape(repr(c.corrected))}[/]")


def changes_line(changes: CanvasChanges | None) -> str | None:
    """``changed: +1 region, ~region 2 (description), -region 0`` from a plan's ``changes``; None if absent."""
    if changes is None:
        return None
    parts = []
    if changes.global_fields:
        parts.append(f"~global ({', '.join(changes.global_fields)})")
    regions = changes.regions
    added = sum(1 for r in regions if r.kind == "added")
    if added:
        parts.append(f"+{added} region{'s' if added > 1 else ''}")
    for r in regions:
        if r.kind == "changed":
            fields = ", ".join(r.fields)
            parts.append(f"~region {r.index}" + (f" ({fields})" if fields else ""))
    parts += [f"-region {r.index}" for r in regions if r.kind == "removed"]
    return "changed: " + (", ".join(parts) or "nothing")


def report(console: Console, job: RenderJob, paths: list[Path]) -> None:
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in job.timings.items())
    seeds: list[int | None] = [*job.seeds] or [None] * len(paths)
    for path, seed in zip(paths, seeds, strict=False):
        say(console, f"wrote [bold]{escape(str(path))}[/] (seed {seed})")
    say(console, f"[dim]render {job.id} on {job.device or '?'} with {job.model or '?'}: {timings}[/]")
