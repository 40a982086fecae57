"""Every failure as one line a user can act on: no tracebacks, no raw pydantic dumps."""

from __future__ import annotations

import functools
import re
import signal
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from shared.client import OmostAPIError, RenderFailed

# Container names in an error's location that say nothing to someone typing options.
_NOISE = {"body", "query", "render", "request"}
_BOUNDS = {
    "greater_than_equal": ("ge", "at least"),
    "less_than_equal": ("le", "at most"),
    "greater_than": ("gt", "more than"),
    "less_than": ("lt", "less than"),
}


def field_error(error: Mapping[str, Any]) -> str:
    """One pydantic (or FastAPI 422) error entry as ``width must be a multiple of 8 (got 100)``."""
    where = ".".join(str(part) for part in error.get("loc", ()) if part not in _NOISE) or "input"
    ctx = error.get("ctx") or {}
    got = error.get("input")
    kind = error.get("type", "")
    if kind in _BOUNDS:
        key, words = _BOUNDS[kind]
        return f"{where} must be {words} {ctx.get(key)} (got {got})"
    if kind == "multiple_of":
        return f"{where} must be a multiple of {ctx.get('multiple_of')} (got {got})"
    if kind == "missing":  # the input is the whole object around the field: not worth quoting
        return f"{where}: field required"
    if kind == "value_error":
        text = str(ctx.get("error") or error.get("msg", "")).removeprefix("Value error, ")
        # Our validators say "must be ... (why); got X": keep the rule and the value, drop the why.
        if match := re.fullmatch(r"(.*?)(?: \([^()]*\))?; got (.+)", text):
            return f"{where} {match[1]} (got {match[2]})"
        return f"{where}: {text}"
    message = str(error.get("msg", "is invalid"))
    return f"{where}: {message[:1].lower()}{message[1:]}" + (f" (got {shown(got)})" if got is not None else "")


def shown(value: Any, limit: int = 40) -> str:
    """A value as an error quotes it: short ones as they are, a long string by its length, never a page."""
    if isinstance(value, str) and len(value) > limit:
        return f"{len(value):,} characters"
    text = repr(value)
    return text if len(text) <= limit else f"{type(value).__name__} of {len(text):,} characters"


def error_line(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(field_error(e) for e in exc.errors(include_url=False))
    if isinstance(exc, OmostAPIError):
        return exc.detail  # the service's problem detail, as it wrote it
    if isinstance(exc, httpx.HTTPError):
        try:
            return f"cannot reach {exc.request.url}: {exc}"
        except RuntimeError:  # an error raised before any request was made
            return str(exc)
    return str(exc) or type(exc).__name__


def interrupt_status(exc: KeyboardInterrupt) -> int:
    """128 + the signal: Ctrl-C is 130; ``shared.cli.main`` raises SIGTERM and SIGHUP with their name."""
    name = str(exc.args[0]) if exc.args else "SIGINT"
    return 128 + int(getattr(signal.Signals, name, signal.SIGINT))


_EXPECTED = (httpx.HTTPError, OmostAPIError, RenderFailed, TimeoutError, RuntimeError, ValueError, OSError)


def friendly_errors(console: Console) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Show what went wrong as one line, exit status 1."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> None:
            try:
                command(*args, **kwargs)
            except (typer.Exit, typer.Abort):  # click's own exits are RuntimeErrors too
                raise
            except KeyboardInterrupt as exc:
                # What was stopped has been said where it was stopped; the status says which signal.
                raise typer.Exit(interrupt_status(exc)) from None
            except _EXPECTED as exc:
                # Text, not markup: an error message may contain square brackets.
                console.print(Text.assemble(("error: ", "red"), error_line(exc)), soft_wrap=True)
                raise typer.Exit(1) from None

        return wrapper

    return decorate
