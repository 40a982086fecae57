from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def engine(tiny_model: Path):
    """The tiny model loaded through the same path as a real checkpoint (a diffusers folder)."""
    from render_service.engine import RenderEngine

    return RenderEngine.load(str(tiny_model), device="cpu")
