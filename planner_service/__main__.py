"""``python -m planner_service``: serve the planner with uvicorn, settings from the environment."""

from __future__ import annotations

import uvicorn

from planner_service.app import create_app
from planner_service.settings import PlannerSettings
from shared.service.logging import configure_logging


def main() -> None:
    settings = PlannerSettings()
    configure_logging(settings)
    # log_config=None keeps our logging (JSON lines with request ids) instead of uvicorn's formatters.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
