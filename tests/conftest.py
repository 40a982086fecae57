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


TINY_FLUX_VERSION = 1
"""Bump when :mod:`render_service.engine.tiny_flux` changes shape, so the cached build is rebuilt."""


@pytest.fixture(scope="session")
def tiny_flux():
    """The tiny random-weight Flux as a diffusers folder, built offline once and cached in the user's
    cache folder (outside the tree) across sessions: building it takes seconds, loading it less."""
    import os
    from pathlib import Path

    from render_service.engine.tiny_flux import build_tiny_flux

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return build_tiny_flux(cache / "omost-tests" / f"tiny-flux-v{TINY_FLUX_VERSION}")
