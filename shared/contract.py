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
    parsed: dict[str, Any] = json.loads(text)
    return parsed


# Unpacking each entry checks its arity as the file loads, and gives the tables exact tuple types.
def _pairs(key: str) -> dict[str, tuple[int, int]]:
    return {name: (a, b) for name, (a, b) in contract()[key].items()}


def _triples(key: str) -> dict[str, tuple[int, int, int]]:
    return {name: (a, b, c) for name, (a, b, c) in contract()[key].items()}


LOCATIONS: dict[str, tuple[int, int]] = _pairs("locations_xy_center_in_90_grid")
OFFSETS: dict[str, tuple[int, int]] = _pairs("offsets_dxdy_in_90_grid")
AREAS: dict[str, tuple[int, int]] = _pairs("areas_wh_in_90_grid")
COLORS: dict[str, tuple[int, int, int]] = _triples("html_web_colors_rgb")

SYSTEM_PROMPT: str = contract()["system_prompt"]
RENDER_DEFAULTS: dict[str, Any] = contract()["render_defaults"]
LLM_DEFAULTS: dict[str, Any] = contract()["llm_defaults"]

GRID = 90
"""The canvas is a 90x90 grid; (x, y) counted from the top-left."""

SUB_PROMPT_TOKEN_BUDGET = 75
"""CLIP's 77-token window less BOS and EOS."""
