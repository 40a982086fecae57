from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.playground.browser import DOCS_IMG_ENV


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests' screenshots go: a temporary folder, so running the tests leaves the tree as it was;
    scripts/docs_images.sh points it at docs/img/ to regenerate the documentation's images."""
    folder = os.environ.get(DOCS_IMG_ENV)
    return Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
