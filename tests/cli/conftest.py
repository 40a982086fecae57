from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import user_environment


@pytest.fixture()
def env(tmp_path: Path, tiny_model: Path) -> dict[str, str]:
    """A user's environment with a fresh cache folder (the tiny model already built in it)."""
    return user_environment(tmp_path, tiny_model)
