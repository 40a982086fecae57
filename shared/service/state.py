"""Typed reads of what an app's lifespan put on ``app.state`` (Starlette types it ``Any``): each
service's dependency providers go through :func:`app_state`, so a route receives a checked type
and a missing or mistyped entry is one clear error instead of an ``AttributeError`` deep in a route."""

from __future__ import annotations

from typing import TypeVar

from starlette.requests import HTTPConnection

T = TypeVar("T")


class StateMissing(RuntimeError):
    """The app's lifespan did not set what a route needs (a 500: a bug, or an app used without its lifespan)."""


def app_state(connection: HTTPConnection, name: str, kind: type[T]) -> T:
    """``app.state.<name>``, checked to be a ``kind``."""
    value = getattr(connection.app.state, name, None)
    if not isinstance(value, kind):
        raise StateMissing(f"app.state.{name} is {type(value).__name__}, not {kind.__name__}: has the lifespan run?")
    return value
