"""``/docs`` and ``/redoc`` of both services work offline: every script, stylesheet and icon the
pages reference is served by the service itself (no CDN), and so is the OpenAPI document.

In-process over ASGI: the docs need no lifespan (no Redis, no LLM), so nothing else is started."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from planner_service.app import create_app as create_planner
from planner_service.settings import PlannerSettings
from render_service.app import create_app as create_render_api
from render_service.settings import RenderSettings

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|(?:url|spec-url)\s*:\s*['"]([^'"]+)['"]""")


def apps() -> list[FastAPI]:
    return [create_planner(PlannerSettings(llm_url="http://127.0.0.1:9/v1")), create_render_api(RenderSettings())]


@pytest.mark.parametrize("app", apps(), ids=["planner", "render"])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_their_own_assets(app: FastAPI, page: str) -> None:
    client = TestClient(app)  # not entered: the lifespan (Redis, LLM) does not run
    html = client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    references = {a or b for a, b in ASSET.findall(html.text)}
    assert references, html.text
    for reference in references:
        assert reference.startswith("/"), f"{page} loads {reference} from elsewhere"
        asset = client.get(reference)
        assert asset.status_code == 200 and len(asset.content) > 100, reference
    scripts = [r for r in references if r.endswith(".js")]
    assert scripts, "the page loads no script of its own"
    assert "openapi" in client.get("/openapi.json").text
