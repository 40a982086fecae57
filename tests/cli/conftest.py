from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


@pytest.fixture()
def env(tmp_path: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment with a fresh cache folder (the tiny model already built in it)."""
    cache = tmp_path / "cache"
    (cache / "omost").mkdir(parents=True)
    (cache / "omost" / "tiny-sdxl").symlink_to(tiny_model)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OMOST_")}
    path = os.pathsep.join([str(ROOT), clean.get("PYTHONPATH", "")])
    return {**clean, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": path}
