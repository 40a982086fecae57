"""The facts of the Omost canvas, loaded from the packaged ``omost_contract.json``.

The Omost LLMs were trained against exactly these names and tables, so the enumerations, the grammar
and the layout maths are all generated from this one file rather than restated by hand.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any


@cache
def contract() -> dict[str, Any]:
    """The whole contract file, parsed once."""
    text = resources.files("shared").joinpath("omost_contract.json").read_text(encoding="utf-8")
    return json.loads(text)


def _table(key: str) -> dict[str, tuple[int, ...]]:
    return {name: tuple(value) for name, value in contract()[key].items()}


LOCATIONS: dict[str, tuple[int, ...]] = _table("locations_xy_center_in_90_grid")
OFFSETS: dict[str, tuple[int, ...]] = _table("offsets_dxdy_in_90_grid")
AREAS: dict[str, tuple[int, ...]] = _table("areas_wh_in_90_grid")
COLORS: dict[str, tuple[int, ...]] = _table("html_web_colors_rgb")

SYSTEM_PROMPT: str = contract()["system_prompt"]
RENDER_DEFAULTS: dict[str, Any] = contract()["render_defaults"]
LLM_DEFAULTS: dict[str, Any] = contract()["llm_defaults"]

GRID = 90
"""The canvas is a 90x90 grid; (x, y) counted from the top-left."""

SUB_PROMPT_TOKEN_BUDGET = 75
"""CLIP's 77-token window less BOS and EOS."""
