"""The contract both services import: the Omost canvas, its code form, layout maths and job schemas.

Nothing here imports torch or FastAPI. The names below are loaded on first use (PEP 562), so
``import shared`` itself is nearly free and a client pays only for the modules it touches.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.canvas import Canvas, GlobalDescription, LocalDescription
    from shared.layout import CanvasLayout, Condition, Placement, layout_canvas, snap_to_placement
    from shared.omost_code import (
        CanvasParseError,
        CanvasTruncatedError,
        ParseResult,
        canvas_to_code,
        parse_canvas_code,
    )

_EXPORTS = {
    "Canvas": "shared.canvas",
    "GlobalDescription": "shared.canvas",
    "LocalDescription": "shared.canvas",
    "CanvasLayout": "shared.layout",
    "Condition": "shared.layout",
    "Placement": "shared.layout",
    "layout_canvas": "shared.layout",
    "snap_to_placement": "shared.layout",
    "CanvasParseError": "shared.omost_code",
    "CanvasTruncatedError": "shared.omost_code",
    "ParseResult": "shared.omost_code",
    "canvas_to_code": "shared.omost_code",
    "parse_canvas_code": "shared.omost_code",
}

__all__ = [  # noqa: RUF022 - grouped by module, as _EXPORTS
    "Canvas", "GlobalDescription", "LocalDescription",
    "CanvasLayout", "Condition", "Placement", "layout_canvas", "snap_to_placement",
    "CanvasParseError", "CanvasTruncatedError", "ParseResult", "canvas_to_code", "parse_canvas_code",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'shared' has no attribute {name!r}")
