from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for the whole test session (never the machine's own instance)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random-weight SDXL-architecture model saved as a diffusers folder, built offline once."""
    from render_service.engine.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-sdxl"))
