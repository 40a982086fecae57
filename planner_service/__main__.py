"""``python -m planner_service``: serve the planner with uvicorn, settings from the environment."""

from __future__ import annotations

import logging

import uvicorn

from planner_service.app import create_app
from planner_service.settings import PlannerSettings


def main() -> None:
    settings = PlannerSettings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower())


if __name__ == "__main__":
    main()
