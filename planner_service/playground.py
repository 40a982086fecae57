"""The web playground: a static page served by the planner that talks to the public HTTP APIs only.

``mount_playground(app, render_api_url)`` adds three things to a FastAPI app:

- ``GET /``: the page (``static/playground/index.html``);
- ``GET /playground/config.json``: where the render API is, and the contract tables and limits the
  page needs (placements, colours, samplers), generated from ``shared`` so nothing is restated;
- ``/playground/static/...``: the page's ES modules and CSS, shipped inside this package.

The page calls the planner's ``/v1/plans`` on its own origin and the render API at
``render_api_url`` (another origin: the render service must allow it with CORS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from planner_service.prompting import EDIT_LEAD_IN
from shared.canvas import MAX_DETAILED_DESCRIPTIONS, MAX_LOCAL_DESCRIPTIONS, MAX_STRING_LENGTH
from shared.contract import AREAS, COLORS, LLM_DEFAULTS, LOCATIONS, OFFSETS, RENDER_DEFAULTS
from shared.jobs import DEFAULT_SAMPLER, MAX_IMAGES, MAX_SEED, MAX_SIDE, MAX_STEPS, MIN_SIDE, FluxOptions, Sampler

STATIC_URL = "/playground/static"
CONFIG_URL = "/playground/config.json"


def static_dir() -> str:
    """The folder of the page's files inside the installed package."""
    return str(Path(__file__).resolve().parent / "static" / "playground")


def playground_config(render_api_url: str, default_size: tuple[int, int] | None = None) -> dict[str, Any]:
    """What the page needs to know: the render API's base URL, the contract tables and the limits.
    ``default_size`` is the stack's own (a tiny-model stack renders small); None: Omost's."""
    width, height = default_size or (RENDER_DEFAULTS["width"], RENDER_DEFAULTS["height"])
    return {
        "render_api_url": render_api_url.rstrip("/"),
        "planner_api_url": "",
        "tables": {
            "locations": {k: list(v) for k, v in LOCATIONS.items()},
            "offsets": {k: list(v) for k, v in OFFSETS.items()},
            "areas": {k: list(v) for k, v in AREAS.items()},
            "colors": {k: list(v) for k, v in COLORS.items()},
        },
        "samplers": list(get_args(Sampler)),
        "render_defaults": {
            "width": width,
            "height": height,
            "steps": RENDER_DEFAULTS["steps"],
            "guidance_scale": RENDER_DEFAULTS["cfg"],
            "sampler": DEFAULT_SAMPLER,
            "negative_prompt": RENDER_DEFAULTS["negative_prompt"],
            "hires_fix": RENDER_DEFAULTS["hires_fix"],
        },
        "flux_defaults": FluxOptions().model_dump(),  # the regional knobs' defaults (a Flux model's form)
        "llm_defaults": {"temperature": LLM_DEFAULTS["temperature"]},
        "edit_lead_in": EDIT_LEAD_IN,
        "limits": {
            "min_side": MIN_SIDE,
            "max_side": MAX_SIDE,
            "max_steps": MAX_STEPS,
            "max_images": MAX_IMAGES,
            "max_seed": MAX_SEED,
            "max_regions": MAX_LOCAL_DESCRIPTIONS,
            "max_details": MAX_DETAILED_DESCRIPTIONS,
            "max_string_length": MAX_STRING_LENGTH,
        },
    }


def mount_playground(app: FastAPI, render_api_url: str, default_size: tuple[int, int] | None = None) -> None:
    """Serve the playground at ``/`` with its config and static files; ``render_api_url`` is the
    render API's base URL as the browser reaches it (e.g. ``http://127.0.0.1:8001``)."""
    folder = static_dir()
    config = playground_config(render_api_url, default_size)
    index = f"{folder}/index.html"

    @app.get("/", include_in_schema=False)
    def playground_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": "no-cache"})

    @app.get(CONFIG_URL, include_in_schema=False)
    def playground_config_json() -> JSONResponse:
        return JSONResponse(config, headers={"Cache-Control": "no-cache"})

    app.mount(STATIC_URL, StaticFiles(directory=folder), name="playground-static")
