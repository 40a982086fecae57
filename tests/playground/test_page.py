"""The playground page in a real Chromium, without the model services.

The page is served by a small test-only app with ``mount_playground`` (the planner mounts it the
same way). The editor needs no service: it starts with an example canvas. ``POST /v1/plans`` here
is a stand-in that speaks the planner's stream format (``delta``, ``retry``, ``plan``, ``error``
events, the final one a ``PlanResponse``) with a canvas chosen by the prompt, and records what the
page sent; the render endpoint only answers an error. The real services are in ``test_e2e.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sse_starlette import EventSourceResponse

from planner_service.playground import mount_playground
from planner_service.schemas import PlanRequest, PlanResponse
from shared.canvas import Canvas, GlobalDescription, LocalDescription
from shared.contract import LOCATIONS
from shared.jobs import RenderRequest
from shared.layout import placement_rect, snap_to_placement
from shared.omost_code import canvas_to_code
from tests.playground.browser import (
    ThreadServer,
    canvas_of,
    chromium,
    drag,
    open_page,
    require_chromium,
    screenshot,
)
from tests.support import free_port

pytestmark = pytest.mark.slow


PLAN_REQUESTS: list[dict] = []
PLANNER_CHANGES = {
    "global_fields": ["tags"],
    "regions": [{"kind": "changed", "index": 1, "description": "The planner.", "fields": ["style"]}],
}
"""The planner's own account of an edit (``PlanResponse.changes``), deliberately not what the page would compute."""


def planned_canvas(prompt: str) -> Canvas:
    """A canvas with one region per word of the prompt, so every turn is recognisable."""
    words = prompt.split()
    regions = [
        LocalDescription(
            location=list(LOCATIONS)[i % 9],
            offset="no offset",
            area="a small square area",
            distance_to_viewer=float(len(words) - i),
            description=f"The {word}.",
            HTML_web_color_name="teal",
        )
        for i, word in enumerate(words)
    ]
    glob = GlobalDescription(description=prompt, HTML_web_color_name="beige")
    return Canvas(global_description=glob, local_descriptions=regions)


def _fake_services(render_port: int) -> tuple[FastAPI, FastAPI]:
    page_app = FastAPI()
    mount_playground(page_app, f"http://127.0.0.1:{render_port}")

    @page_app.post("/v1/plans", response_model=None)
    async def plans(body: PlanRequest) -> JSONResponse | EventSourceResponse:
        PLAN_REQUESTS.append(body.model_dump(mode="json", exclude_none=True))
        if body.prompt == "unreachable":
            return JSONResponse({"detail": "the LLM server at http://127.0.0.1:9 is unreachable"}, status_code=503)
        canvas = planned_canvas(body.prompt)
        code = canvas_to_code(canvas)

        async def events():
            if body.prompt == "garbage":
                yield {"event": "delta", "data": json.dumps({"text": "canvas = ???"})}
                detail = "the LLM's answers did not parse after 3 attempts: line 1: not valid Python"
                yield {"event": "error", "data": json.dumps({"status": 502, "detail": detail})}
                return
            yield {"event": "delta", "data": json.dumps({"text": "```python\ncanvas = Canv"})}
            yield {"event": "retry", "data": json.dumps({"attempt": 2, "error": "line 2: not valid Python"})}
            for start in range(0, len(code), 40):
                await asyncio.sleep(0.005)
                yield {"event": "delta", "data": json.dumps({"text": code[start : start + 40]})}
            # Like a planner without PlanResponse.changes: the page computes the changes itself.
            plan = json.loads(PlanResponse(canvas=canvas, code=code).model_dump_json(exclude_none=True))
            if body.prompt == "trust the planner":
                plan["changes"] = PLANNER_CHANGES
            yield {"event": "plan", "data": json.dumps(plan)}

        return EventSourceResponse(events())

    render_app = FastAPI()
    render_app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])

    @render_app.post("/v1/renders")
    def renders() -> JSONResponse:
        detail = "width: must be a multiple of 8 (the VAE works on 8x8 pixel blocks); got 100"
        return JSONResponse({"detail": detail}, status_code=422)

    return page_app, render_app


@pytest.fixture(scope="module")
def site() -> Iterator[str]:
    render_port = free_port()
    page_app, render_app = _fake_services(render_port)
    with ThreadServer(render_app, render_port), ThreadServer(page_app, free_port()) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser(site: str) -> Iterator[object]:
    require_chromium()
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser, site: str):
    with open_page(browser, site + "/", {"width": 1400, "height": 1000}, 15_000) as page:
        yield page


def test_config_and_static_files_are_served(site: str) -> None:
    import httpx

    config = httpx.get(site + "/playground/config.json").json()
    assert config["render_api_url"].startswith("http://127.0.0.1:")
    assert len(config["tables"]["colors"]) == 149 and "in the center" in config["tables"]["locations"]
    for name in ["app.js", "api.js", "layout.js", "omost.js", "plan_stream.js", "style.css"]:
        response = httpx.get(f"{site}/playground/static/{name}")
        assert response.status_code == 200, name
    assert "javascript" in httpx.get(site + "/playground/static/app.js").headers["content-type"]
    html = httpx.get(site + "/").text
    assert "<html" in html and "http://" not in html.replace("http://www.w3.org", "")  # no CDN, no external font


def test_boxes_code_and_json_agree_with_the_python_contract(page) -> None:
    canvas = canvas_of(page)
    boxes = page.locator("#boxes .box")
    assert boxes.count() == len(canvas.local_descriptions) == 3
    page.click("#tab-code")
    assert page.locator("#code").input_value() == canvas_to_code(canvas)
    # Box geometry is the placement rect, drawn in layer order (far to near).
    stage = page.locator("#stage").bounding_box()
    for i in range(boxes.count()):
        box = boxes.nth(i)
        region = canvas.local_descriptions[int(box.get_attribute("data-index"))]
        top, bottom, left, right = placement_rect(region.location, region.offset, region.area)
        b = box.bounding_box()
        assert abs(b["x"] - stage["x"] - left / 90 * stage["width"]) < 2
        assert abs(b["y"] - stage["y"] - top / 90 * stage["height"]) < 2
        assert abs(b["width"] - (right - left) / 90 * stage["width"]) < 2
        assert abs(b["height"] - (bottom - top) / 90 * stage["height"]) < 2


def test_dragging_a_box_snaps_like_the_python_function(page) -> None:
    before = canvas_of(page)
    stage = page.locator("#stage").bounding_box()
    box = page.locator('#boxes .box[data-index="1"]')  # the cat, on the left
    box.click()
    region = before.local_descriptions[1]
    rect = placement_rect(region.location, region.offset, region.area)
    # Move it by 23 grid cells right and 12 up.
    drag(page, box, 23 / 90 * stage["width"], -12 / 90 * stage["height"])
    after = canvas_of(page).local_descriptions[1]
    expected = snap_to_placement((rect[0] - 12, rect[1] - 12, rect[2] + 23, rect[3] + 23))
    got = (after.location, after.offset, after.area)
    assert got != (region.location, region.offset, region.area)
    assert placement_rect(*got) == placement_rect(*expected)  # no tie near this rectangle
    page.click("#tab-code")
    code = page.locator("#code").input_value()
    assert f"location={after.location!r}" in code and code == canvas_to_code(canvas_of(page))
    # Resize from the bottom-right corner.
    box = page.locator('#boxes .box[data-index="1"]')
    rect2 = placement_rect(*got)
    drag(page, box, 20 / 90 * stage["width"], 20 / 90 * stage["height"], handle="se")
    resized = canvas_of(page).local_descriptions[1]
    want = snap_to_placement((rect2[0], rect2[1] + 20, rect2[2], rect2[3] + 20), prefer=got)
    assert placement_rect(resized.location, resized.offset, resized.area) == placement_rect(*want)


def test_keyboard_moves_adds_and_deletes_regions(page) -> None:
    page.locator('#boxes .box[data-index="0"]').focus()
    page.keyboard.press("Enter")
    assert page.locator("#f-description").is_visible()
    page.locator('#boxes .box[data-index="2"]').focus()
    start = canvas_of(page).local_descriptions[2]
    page.keyboard.press("ArrowLeft")
    moved = canvas_of(page).local_descriptions[2]
    r0 = placement_rect(start.location, start.offset, start.area)
    assert placement_rect(moved.location, moved.offset, moved.area) == placement_rect(
        *snap_to_placement((r0[0], r0[1], r0[2] - 10, r0[3] - 10), prefer=(start.location, start.offset, start.area))
    )
    page.click("#add-region")
    assert page.locator("#boxes .box").count() == 4
    assert len(canvas_of(page).local_descriptions) == 4
    page.keyboard.press("Delete")  # the new box has focus
    assert len(canvas_of(page).local_descriptions) == 3


def test_fields_code_and_json_views_stay_in_sync(page) -> None:
    page.locator('#boxes .box[data-index="0"]').click()
    page.fill("#f-description", "A red velvet sofa.")
    page.select_option("#f-color", "darkred")
    canvas = canvas_of(page)
    assert canvas.local_descriptions[0].description == "A red velvet sofa."
    assert canvas.local_descriptions[0].HTML_web_color_name == "darkred"
    assert "A red velvet sofa." in page.locator('#boxes .box[data-index="0"]').inner_text()
    # Edit the code: the boxes and the JSON follow.
    page.click("#tab-code")
    code = page.locator("#code").input_value().replace("'on the left'", "'on the top-left'", 1)
    page.fill("#code", code)
    page.wait_for_function("document.querySelector('#json').value.includes('on the top-left')")
    assert canvas_of(page).local_descriptions[1].location == "on the top-left"
    # A broken edit shows the reason and changes nothing.
    page.fill("#code", code.replace("canvas = Canvas()", "import os"))
    page.wait_for_selector("#code-error:not([hidden])")
    assert "only canvas = Canvas()" in page.inner_text("#code-error")
    page.click("#tab-json")
    data = json.loads(page.locator("#json").input_value())
    data["local_descriptions"][2]["area"] = "a large square area"
    page.fill("#json", json.dumps(data))
    page.wait_for_function("document.querySelector('#code').value.includes(\"area='a large square area'\")")
    data["local_descriptions"][2]["area"] = "a huge area"
    page.fill("#json", json.dumps(data))
    page.wait_for_selector("#json-error:not([hidden])")
    assert "a huge area" in page.inner_text("#json-error")


def test_api_errors_show_the_api_message(page) -> None:
    page.fill("#prompt", "unreachable")
    page.click("#plan-submit")
    page.wait_for_selector("#plan-error:not([hidden])")
    assert page.inner_text("#plan-error") == "the LLM server at http://127.0.0.1:9 is unreachable"
    page.fill("#prompt", "garbage")  # an error event inside the stream
    page.click("#plan-submit")
    page.wait_for_function("document.querySelector('#plan-error').textContent.includes('did not parse')")
    assert page.locator("#turns .turn.failed").count() == 2
    assert len(canvas_of(page).local_descriptions) == 3  # the canvas shown is untouched
    page.fill("#r-width", "100")
    page.click("#render-submit")
    page.wait_for_selector("#render-error:not([hidden])")
    assert "multiple of 8" in page.inner_text("#render-error")


def test_copy_as_curl_is_the_exact_request(page) -> None:
    page.fill("#r-width", "128")
    page.fill("#r-height", "96")
    page.check("#r-hires")
    page.fill("#r-hires-scale", "1.25")
    page.select_option("#r-sampler", "euler")
    page.fill("#r-seed", "42")
    page.click("#copy-curl")
    curl = page.locator("#curl").input_value()
    assert curl.startswith("curl -X POST 'http://127.0.0.1:")
    body = json.loads(curl.split("--data-raw '", 1)[1][:-1].replace("'\"'\"'", "'"))
    assert body["width"] == 128 and body["height"] == 96
    assert body["sampler"] == "euler" and body["seed"] == 42 and body["hires_fix"]["scale"] == 1.25
    RenderRequest.model_validate(body)  # exactly what POST /v1/renders accepts
    assert Canvas.model_validate(body["canvas"]) == canvas_of(page)


def test_every_control_has_a_label_and_tab_order_is_sane(page) -> None:
    unlabeled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
            .filter((e) => !e.closest('[hidden]') && e.type !== 'hidden')
            .filter((e) => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim())
            .map((e) => e.id || e.outerHTML.slice(0, 80))"""
    )
    assert unlabeled == []
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "prompt"


def test_phone_sized_screen(browser, site: str, screenshots: Path) -> None:
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, has_touch=True)
    page = context.new_page()
    page.goto(site + "/")
    page.wait_for_selector("body[data-ready=true]")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    stage = page.locator("#stage").bounding_box()
    assert stage["width"] <= 390
    assert page.locator("#boxes .box").count() == 3
    screenshot(page, "playground-phone.png", screenshots)
    context.close()


def test_streamed_turns_are_kept_and_can_be_revisited(page, screenshots: Path) -> None:
    PLAN_REQUESTS.clear()
    page.fill("#prompt", "cat dog")
    page.fill("#plan-seed", "5")
    page.fill("#plan-temperature", "0.3")
    page.press("#prompt", "Control+Enter")
    try:
        page.wait_for_function("document.querySelectorAll('#boxes .box').length === 2", timeout=10_000)
    except Exception:
        raise AssertionError(page.inner_text("#plan-error") + " | " + page.inner_text("#turns")) from None
    assert canvas_of(page) == planned_canvas("cat dog")
    first = PLAN_REQUESTS[-1]
    assert first == {"prompt": "cat dog", "stream": True, "seed": 5, "temperature": 0.3, "history": []}
    # Second turn: the first one goes along as inline history.
    page.fill("#prompt", "cat dog bird")
    page.click("#plan-submit")
    page.wait_for_function("document.querySelectorAll('#boxes .box').length === 3")
    history = PLAN_REQUESTS[-1]["history"]
    assert [t["role"] for t in history] == ["user", "assistant"]
    assert history[0]["content"] == "cat dog" and history[1]["content"] == canvas_to_code(planned_canvas("cat dog"))
    assert "canvas" not in PLAN_REQUESTS[-1]
    # Go back to turn 1, edit its canvas, and plan from there: history up to turn 1, plus the edit.
    page.locator("#turns .turn button").first.click()
    assert canvas_of(page) == planned_canvas("cat dog")
    assert page.locator("#turns .turn button").first.get_attribute("aria-current") == "true"
    page.locator('#boxes .box[data-index="0"]').focus()
    page.keyboard.press("Delete")
    page.fill("#prompt", "fish")
    page.click("#plan-submit")
    done = "!document.querySelector('#turns .turn:last-child button').disabled"
    page.wait_for_function(f"document.querySelectorAll('#turns .turn').length === 3 && {done}")
    sent = PLAN_REQUESTS[-1]
    assert len(sent["history"]) == 2 and sent["history"][0]["content"] == "cat dog"
    assert len(sent["canvas"]["local_descriptions"]) == 1  # the edited canvas is the starting point
    assert canvas_of(page) == planned_canvas("fish")
    assert "from turn 1" in page.locator("#turns .turn").nth(2).inner_text()
    edited = Canvas.model_validate(sent["canvas"])
    # A fourth turn continues the branch 1 → 3, with the edited canvas as turn 1's answer (as the planner saw it).
    page.fill("#prompt", "fish crab")
    page.click("#plan-submit")
    page.wait_for_function("document.querySelectorAll('#boxes .box').length === 2")
    history = [(t["role"], t["content"]) for t in PLAN_REQUESTS[-1]["history"]]
    assert history == [
        ("user", "cat dog"),
        ("assistant", canvas_to_code(edited)),
        ("user", "fish"),
        ("assistant", canvas_to_code(planned_canvas("fish"))),
    ]
    screenshot(page, "playground-turns.png", screenshots)


def test_an_edit_shows_what_changed(page) -> None:
    page.fill("#prompt", "cat dog")
    page.click("#plan-submit")
    page.wait_for_function("document.querySelectorAll('#boxes .box').length === 2")
    assert page.locator("#turns .turn .changes").count() == 0  # a new conversation: nothing to compare with
    assert page.locator("#boxes .box[data-change]").count() == 0
    # The user's edit through the JSON view is the next turn's starting point: the cat and the dog at the
    # distances the next plan gives them, and a fish that the next plan will not have.
    page.click("#tab-json")
    data = json.loads(page.locator("#json").input_value())
    data["local_descriptions"][0]["distance_to_viewer"] = 3.0
    data["local_descriptions"][1]["distance_to_viewer"] = 2.0
    fish = planned_canvas("fish").local_descriptions[0].model_copy(update={"location": list(LOCATIONS)[5]})
    data["local_descriptions"].append(fish.model_dump(mode="json"))
    page.fill("#json", json.dumps(data))
    page.wait_for_function("document.querySelector('#code').value.includes('The fish.')")
    page.fill("#prompt", "cat corgi bird")  # the dog's place now holds a corgi; a bird is new; the fish is gone
    page.click("#plan-submit")
    page.wait_for_function("document.querySelectorAll('#boxes .box').length === 3")
    assert len(PLAN_REQUESTS[-1]["canvas"]["local_descriptions"]) == 3
    summary = page.locator("#turns .turn").last.locator(".changes").inner_text()
    # (The stand-in planner's global description is the prompt, so it changed too.)
    assert summary == (
        "Changes: 1 added (The bird.) · 1 changed (The corgi.: description) · 1 removed (The fish.)"
        " · global: description"
    )
    marks = {
        int(box.get_attribute("data-index")): box.get_attribute("data-change")
        for box in page.locator("#boxes .box").all()
    }
    assert marks == {0: None, 1: "changed", 2: "added"}
    assert "changed by the last plan" in page.locator('#boxes .box[data-index="1"]').get_attribute("aria-label")
    # Editing the canvas clears the highlights (they describe the plan, not the edit); going back shows them again.
    page.locator('#boxes .box[data-index="2"]').focus()
    page.keyboard.press("ArrowLeft")
    assert page.locator("#boxes .box[data-change]").count() == 0
    page.locator("#turns .turn button").last.click()
    assert page.locator("#boxes .box[data-change]").count() == 2
    # A planner that sends its own account of the changes is believed.
    page.fill("#prompt", "trust the planner")
    page.click("#plan-submit")
    done = "!document.querySelector('#turns .turn:last-child button').disabled"
    page.wait_for_function(f"document.querySelectorAll('#turns .turn').length === 3 && {done}")
    summary = page.locator("#turns .turn").last.locator(".changes").inner_text()
    assert summary == "Changes: 1 changed (The planner.: style) · global: tags"
    assert page.locator('#boxes .box[data-change="changed"]').get_attribute("data-index") == "1"
