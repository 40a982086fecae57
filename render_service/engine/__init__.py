"""The diffusion engine: SDXL with Omost's text encoding and regional attention.

Importing this package is cheap (torch and diffusers load on first use of :class:`RenderEngine`
through its module), so the API process can import the result and error types without a GPU stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from render_service.engine.types import ModelNotFoundError, RenderCanceled, RenderResult

if TYPE_CHECKING:
    from render_service.engine.engine import RenderEngine

__all__ = ["ModelNotFoundError", "RenderCanceled", "RenderEngine", "RenderResult"]


def __getattr__(name: str) -> Any:
    # Lazy: ``from render_service.engine import RenderEngine`` imports torch only when asked for.
    if name == "RenderEngine":
        from render_service.engine.engine import RenderEngine

        return RenderEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
