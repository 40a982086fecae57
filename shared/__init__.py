"""The contract both services import: the Omost canvas, its code form, layout maths and job schemas.

Nothing here imports torch or FastAPI, so ``import shared`` stays fast for clients.
"""

from shared.canvas import Canvas, GlobalDescription, LocalDescription
from shared.layout import CanvasLayout, Condition, layout_canvas
from shared.omost_code import CanvasParseError, CanvasTruncatedError, ParseResult, canvas_to_code, parse_canvas_code

__all__ = [
    "Canvas",
    "CanvasLayout",
    "CanvasParseError",
    "CanvasTruncatedError",
    "Condition",
    "GlobalDescription",
    "LocalDescription",
    "ParseResult",
    "canvas_to_code",
    "layout_canvas",
    "parse_canvas_code",
]
