"""Debian's Chromium driven by Python Playwright, and small in-process servers for page tests."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.canvas import Canvas

CHROMIUM = os.environ.get("OMOST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS_IMG_ENV = "OMOST_DOCS_IMG"
"""Where the screenshots go when set (scripts/docs_images.sh sets it to docs/img); else a temporary folder."""


SKIP_ENV = "OMOST_SKIP_BROWSER"
"""Set to 1 to skip the browser tests on purpose; without it a missing browser fails them (never a silent skip)."""


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (browser tests use Debian's)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed (pip install playwright)"
    return None


def require_chromium() -> None:
    """Fail the test with the reason when the browser is missing, unless OMOST_SKIP_BROWSER=1 asks to skip."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: browser tests skipped on request")
    reason = browser_missing()
    if reason:
        pytest.fail(f"{reason}; set {SKIP_ENV}=1 to skip the browser tests on purpose", pytrace=False)


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium browser (Playwright ``Browser``)."""
    require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_page(browser, url: str, viewport: dict[str, int], timeout_ms: int) -> Iterator[object]:
    """The playground at ``url`` once it reports ready; an uncaught error on the page fails the test."""
    context = browser.new_context(viewport=viewport)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=timeout_ms)
    try:
        yield page
    finally:
        context.close()
    assert not errors, errors


def canvas_of(page) -> Canvas:
    """The canvas the page holds, read from its JSON view."""
    return Canvas.model_validate(json.loads(page.locator("#json").input_value()))


class ThreadServer:
    """A uvicorn server for an ASGI app on a free loopback port, in a background thread."""

    def __init__(self, app, port: int) -> None:
        import uvicorn

        self.port = port
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def drag(page, locator, dx: float, dy: float, handle: str | None = None) -> None:
    """Drag a box by (dx, dy) pixels in small steps, as a hand would: by the middle of its label (clear of
    the corner handles), or by its ``handle`` (``"se"``: the south-east corner) to resize it."""
    target = locator.locator(f".handle.{handle}") if handle else locator.locator(".label")
    b = target.bounding_box()
    x, y = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    page.mouse.move(x, y)
    page.mouse.down()
    for k in range(1, 6):
        page.mouse.move(x + dx * k / 5, y + dy * k / 5)
    page.mouse.up()


def screenshot(page, name: str, folder: Path, full_page: bool = False) -> Path:
    """Save a screenshot into ``folder`` (the ``screenshots`` fixture: a temporary folder, or docs/img/
    when scripts/docs_images.sh regenerates the documentation's images)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    page.screenshot(path=str(path), full_page=full_page)
    return path
