"""``python -m render_service``: serve the render API with uvicorn, configured from the environment."""

from __future__ import annotations

from typing import Any

import uvicorn
from fastapi import FastAPI

from render_service.app import create_app
from render_service.settings import RenderSettings, configure_logging


def app_factory() -> FastAPI:
    """What each uvicorn worker process calls when ``OMOST_RENDER_API_WORKERS`` > 1."""
    settings = RenderSettings()
    configure_logging(settings)
    return create_app(settings)


def main() -> None:
    settings = RenderSettings()
    configure_logging(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        # log_config=None keeps our (JSON) logging instead of uvicorn's default formatters.
        "log_config": None,
        "log_level": settings.log_level.lower(),
    }
    if settings.api_workers > 1:
        # Several processes need an import string; each builds its app from the same environment.
        uvicorn.run("render_service.__main__:app_factory", factory=True, workers=settings.api_workers, **options)
    else:
        uvicorn.run(create_app(settings), **options)


if __name__ == "__main__":
    main()
