"""A mixed fleet as real processes: a tiny-SDXL worker (the default model) and a tiny-Flux worker
(model ``flux``) on one Redis, one stream each; GET /v1/models, the 422s of a request a model
cannot take, whole Flux jobs with 1, 5 and 12 regions, progress and cancel held by the step gate."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.render_service.helpers import Stack, render_stack, start_worker, unique_prefix, wait_for, wait_for_workers
from tests.support import RedisServer, regions_canvas

pytestmark = pytest.mark.slow  # worker processes load torch and a model each

SETTINGS = {"claim_idle_seconds": 4.0, "heartbeat_seconds": 0.5, "block_seconds": 0.5, "shutdown_grace_seconds": 0.5}
canvas = regions_canvas


@pytest.fixture(scope="module")
def fleet(
    redis_server: RedisServer, tiny_model: Path, tiny_flux: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("models-logs")
    with render_stack(redis_server.url, unique_prefix("models"), tiny_model, logs, {"sdxl-1": SETTINGS}) as stack:
        stack.workers["flux-1"] = start_worker(
            stack.redis_url, stack.prefix, tiny_flux, logs, "flux-1", model_name="flux",
            test_step_gate=stack.gate.folder, **SETTINGS,
        )  # fmt: skip
        wait_for_workers(stack.http, 2)
        yield stack


def post(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v1/renders", json={"canvas": canvas(2), "width": 64, "height": 64, **fields})


def test_models_lists_what_the_workers_serve(fleet: Stack) -> None:
    answer = fleet.http.get("/v1/models")
    assert answer.status_code == 200, answer.text
    listed = {m["name"]: m for m in answer.json()["models"]}
    assert answer.json()["default"] == "default" and set(listed) == {"default", "flux"}
    sdxl, flux = listed["default"], listed["flux"]
    assert (sdxl["family"], sdxl["size_multiple"], sdxl["workers"]) == ("sdxl", 8, 1)
    assert "dpmpp_2m_karras" in sdxl["samplers"] and "hires_fix" in sdxl["options"]
    assert (flux["family"], flux["variant"], flux["size_multiple"], flux["samplers"]) == ("flux", "dev", 16, ["euler"])
    assert (flux["default_steps"], flux["default_guidance_scale"], flux["workers"]) == (28, 3.5, 1)


def test_what_a_model_cannot_take_is_a_422_that_says_so(fleet: Stack) -> None:
    http = fleet.http
    cases = [
        ({"model": "flux", "sampler": "dpmpp_2m_karras"}, "sampler", "takes euler"),
        ({"model": "flux", "width": 72}, "width", "multiples of 16"),
        ({"model": "flux", "hires_fix": {}}, "hires_fix", "does not take hires_fix"),
        ({"flux": {"base_ratio": 0.5}}, "flux", "does not take flux"),
        ({"model": "sd3"}, "model", "no worker serves model 'sd3'"),
    ]
    for fields, field, words in cases:
        answer = post(http, **fields)
        assert answer.status_code == 422, (fields, answer.text)
        errors = answer.json()["errors"]
        assert any(e["loc"][-1] == field and words in e["msg"] for e in errors), (fields, errors)


@pytest.mark.parametrize("conditions", [1, 5, 12])
def test_flux_jobs_render_on_the_flux_worker(fleet: Stack, conditions: int) -> None:
    answer = post(fleet.http, model="flux", steps=2, seed=7, canvas=canvas(conditions), flux={"regional_steps": 2})
    assert answer.status_code == 202, answer.text
    done = wait_for(fleet.http, answer.json()["id"], lambda r: r["status"] in ("succeeded", "failed"), 180, "finished")
    assert done["status"] == "succeeded", done["error"]
    assert done["worker"] == "flux-1" and done["request"]["sampler"] == "euler"  # the model's default, filled in
    assert done["progress"] == {"step": 2, "total": 2}
    image = fleet.http.get(done["urls"]["images"][0])
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_default_jobs_stay_on_the_sdxl_worker(fleet: Stack) -> None:
    answer = post(fleet.http, steps=2)
    assert answer.status_code == 202, answer.text
    done = wait_for(fleet.http, answer.json()["id"], lambda r: r["status"] in ("succeeded", "failed"), 180, "finished")
    assert (done["status"], done["worker"], done["request"]["sampler"]) == ("succeeded", "sdxl-1", "dpmpp_2m_karras")


def test_flux_progress_and_cancel_between_steps(fleet: Stack) -> None:
    http = fleet.http
    with fleet.gate.holding_all():
        answer = post(http, model="flux", steps=4, canvas=canvas(5))
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["id"]
        held = wait_for(http, job_id, lambda r: (r.get("progress") or {}).get("step", 0) >= 1, 120, "first step")
        assert held["status"] == "running" and held["progress"]["total"] == 4
        assert http.delete(f"/v1/renders/{job_id}").status_code in (200, 202)
        done = wait_for(http, job_id, lambda r: r["status"] in ("canceled", "succeeded", "failed"), 60, "ended")
    assert done["status"] == "canceled" and done["progress"]["step"] < 4
