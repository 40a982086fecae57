"""The playground's model picker against a real mixed fleet, in Debian's Chromium.

Real processes: a redis-server, the render API (with a bearer token) and two workers, the tiny SDXL
(the default model) and the tiny Flux (model ``flux``, a 10 s registration TTL so the last test can
see it go). The page is the planner's, mounted by ``mount_playground`` on a small test app: the
picker talks only to the render API, so no planner (and no LLM) is needed here; ``test_e2e.py`` has
the planner. In order: the model list's error is shown and a token opens it; Flux is picked, the form
follows it, a render succeeds on the Flux worker; the API's 422 for a size Flux refuses is shown; the
Flux worker stops, its registration expires, and a render for it is refused at submit, shown, and
the picker drops it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from planner_service.playground import mount_playground
from tests.playground.browser import ThreadServer, chromium, open_page, require_chromium, screenshot
from tests.render_service.helpers import Stack, render_stack, start_worker, unique_prefix, wait_for_workers
from tests.support import RedisServer, free_port, wait_until

pytestmark = pytest.mark.slow  # worker processes load torch and a model each

TOKEN = "picker-s3cret"
SETTINGS = {"heartbeat_seconds": 0.5, "block_seconds": 0.5, "shutdown_grace_seconds": 0.5}
RENDER_TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tiny_model: Path, tiny_flux: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    require_chromium()
    logs = tmp_path_factory.mktemp("picker-logs")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with render_stack(
        redis_server.url, unique_prefix("picker"), tiny_model, logs, {"sdxl-1": SETTINGS},
        api_settings={"api_token": TOKEN}, headers=auth,
    ) as stack:  # fmt: skip
        stack.workers["flux-1"] = start_worker(
            stack.redis_url, stack.prefix, tiny_flux, logs, "flux-1",
            model_name="flux", model_ttl_seconds=10, **SETTINGS,
        )  # fmt: skip
        wait_for_workers(stack.http, 2)
        yield stack


@pytest.fixture(scope="module")
def page(fleet: Stack) -> Iterator[object]:
    site = FastAPI()
    mount_playground(site, fleet.api.url, (64, 64))
    with (
        ThreadServer(site, free_port()) as server,
        chromium() as browser,
        open_page(browser, server.url + "/", {"width": 1400, "height": 1000}, 30_000) as page,
    ):
        yield page


def test_a_model_list_error_is_shown_and_a_token_opens_the_list(page, fleet: Stack) -> None:
    page.wait_for_selector("#r-model[data-state=error]")
    error = page.inner_text("#models-error")
    assert "GET /v1/models" in error and "bearer token" in error.lower(), error
    assert page.locator("#r-model option").all_inner_texts() == ["default (the model list is unavailable)"]
    assert not page.locator("#sampler-field").is_hidden()  # without a list: the default model's form
    assert page.locator("#flux-fields").is_hidden()
    page.click("summary:has-text('Render API access')")
    page.fill("#r-token", TOKEN)
    page.dispatch_event("#r-token", "change")
    page.wait_for_selector("#r-model[data-state=loaded]")
    assert page.locator("#models-error").is_hidden()
    options = page.locator("#r-model option")
    assert [options.nth(i).get_attribute("value") for i in range(options.count())] == ["default", "flux"]
    assert page.locator("#r-model").input_value() == "default"  # the API's default is chosen
    assert "sizes ×16" in options.nth(1).inner_text() and "flux dev" in options.nth(1).inner_text()


def test_picking_flux_fits_the_form_and_renders_on_the_flux_worker(page, fleet: Stack, screenshots: Path) -> None:
    page.wait_for_selector("#r-model[data-state=loaded]")
    page.fill("#r-width", "100")
    page.select_option("#r-model", "flux")
    # The form follows the model: sizes on multiples of 16, its default steps and guidance, and no
    # SDXL-only field (sampler choice, negative prompt, hires fix).
    assert page.locator("#r-width").get_attribute("step") == "16"
    assert page.locator("#r-width").input_value() == "96"  # 100 to the nearest multiple of 16
    assert page.locator("#r-steps").input_value() == "28" and page.locator("#r-guidance").input_value() == "3.5"
    for field in ("#sampler-field", "#negative-field", "#hires-field"):
        assert page.locator(field).is_hidden(), field
    assert not page.locator("#flux-fields").is_hidden()  # its regional knobs instead
    assert "multiples of 16" in page.inner_text("#model-info")
    curl = page.locator("#curl").input_value()
    assert '"model":"flux"' in curl and "negative_prompt" not in curl and "sampler" not in curl
    fields = {"#r-width": "96", "#r-height": "64", "#r-steps": "2", "#r-seed": "7", "#r-flux-steps": "1"}
    for field, value in fields.items():
        page.fill(field, value)
    page.click("#render-submit")
    job = page.locator("#gallery .job").first
    job.wait_for(timeout=30_000)
    page.wait_for_selector('#gallery .job[data-status="succeeded"] img.result', timeout=RENDER_TIMEOUT_MS)
    natural_size = "img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])"
    size = job.locator("img.result").first.evaluate(natural_size)
    assert size == [96, 64]
    assert job.locator(".params").inner_text().startswith("flux · 96×64 · 2 steps")
    record = fleet.http.get(f"/v1/renders/{job.get_attribute('data-job')}").json()
    assert (record["worker"], record["request"]["model"], record["request"]["sampler"]) == ("flux-1", "flux", "euler")
    assert record["request"]["flux"] == {**record["request"]["flux"], "regional_steps": 1}
    assert "Flux regional steps 1" in job.locator(".params").inner_text()
    screenshot(page, "playground-flux.png", screenshots, full_page=True)

    # Back to the default model: its SDXL fields come back, with its own defaults.
    page.select_option("#r-model", "default")
    assert not page.locator("#sampler-field").is_hidden() and not page.locator("#hires-field").is_hidden()
    assert page.locator("#flux-fields").is_hidden() and "flux" not in page.locator("#curl").input_value()
    assert page.locator("#r-width").get_attribute("step") == "8"

    # The Flux job's card brings it back: its model picked again, with the job's own values.
    job.locator("button.reuse").click()
    assert page.locator("#r-model").input_value() == "flux" and page.locator("#sampler-field").is_hidden()
    assert page.locator("#r-steps").input_value() == "2" and page.locator("#r-flux-steps").input_value() == "1"
    assert '"model":"flux"' in page.locator("#curl").input_value()


def test_the_apis_422_for_what_flux_refuses_is_shown(page) -> None:
    page.select_option("#r-model", "flux")
    page.fill("#r-width", "72")  # typed by hand: the API, not the page, is the judge
    page.click("#render-submit")
    page.wait_for_selector("#render-error:not([hidden])")
    error = page.inner_text("#render-error")
    assert error.startswith('The render API refused model "flux" (422)'), error
    assert "width: model 'flux' (flux) needs multiples of 16; got 72" in error, error
    assert page.locator("#render-error").get_attribute("data-kind") == "model"


def test_a_model_whose_workers_left_is_refused_at_submit_and_leaves_the_picker(page, fleet: Stack) -> None:
    page.select_option("#r-model", "flux")
    page.fill("#r-width", "64")
    fleet.workers["flux-1"].stop()

    def flux_gone() -> bool:
        return "flux" not in {m["name"] for m in fleet.http.get("/v1/models").json()["models"]}

    wait_until(flux_gone, 60, 0.5, "the flux registration to expire")  # 10 s after its last heartbeat
    page.click("#render-submit")
    page.wait_for_selector("#render-error[data-kind=model]:not([hidden])")
    assert "no worker serves model 'flux'" in page.inner_text("#render-error")
    # The page read the list again: flux is gone from the picker, the default model is chosen.
    page.wait_for_function("!document.querySelector('#r-model option[value=flux]')")
    assert page.locator("#r-model").input_value() == "default"
