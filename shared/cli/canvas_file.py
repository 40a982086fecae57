"""A user's canvas file, read as JSON or as Omost code, and every problem in it as one line that
names the file, the parser, where in the file (a JSON path, or a line) and what is wrong.

The parser is picked by content first (a file that opens with ``{`` or ``[`` is JSON, whatever
its name), then by extension (``.json`` is JSON); anything else is Omost code (``.py``, ``.md``,
an LLM's answer). A truncated ``.json`` is therefore a JSON error, never "the code stops in the
middle of a call".
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shared.canvas import Canvas
from shared.cli.errors import field_error
from shared.omost_code import CanvasParseError, parse_canvas_code

JSON = "JSON"
CODE = "Omost code"


class CanvasFileError(ValueError):
    """One line: ``canvas.json (JSON): local_descriptions[0].location: field required``."""

    def __init__(self, path: Path, parser: str, problem: str) -> None:
        super().__init__(f"{path} ({parser}): {problem}")
        self.path = path
        self.parser = parser
        self.problem = problem


def parser_for(path: Path, text: str) -> str:
    if text.lstrip()[:1] in ("{", "[") or path.suffix.lower() == ".json":
        return JSON
    return CODE


def json_path(loc: Sequence[str | int]) -> str:
    """``("local_descriptions", 0, "location")`` as ``local_descriptions[0].location``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _problems(exc: ValidationError, prefix: tuple[str | int, ...]) -> str:
    errors = exc.errors(include_url=False)
    return "; ".join(field_error({**e, "loc": (json_path((*prefix, *e["loc"])),)}) for e in errors)


def _from_json(path: Path, text: str) -> Canvas:
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise CanvasFileError(path, JSON, f"not valid JSON: {exc.msg} at {where}") from None
    # A canvas, or an API answer that holds one (POST /v1/plans, --json of `omost plan`).
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, Mapping) and "canvas" in data and "global_description" not in data:
        data, prefix = data["canvas"], ("canvas",)
    if not isinstance(data, Mapping):
        kind = type(data).__name__.replace("dict", "object").replace("list", "array")
        raise CanvasFileError(path, JSON, f"{json_path(prefix)}: a canvas is a JSON object, not {kind}")
    try:
        return Canvas.model_validate(data)
    except ValidationError as exc:
        raise CanvasFileError(path, JSON, _problems(exc, prefix)) from None


def read_canvas(path: Path) -> Canvas:
    """The canvas in ``path``; :class:`CanvasFileError` (one line) if it cannot be read as one."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CanvasFileError(path, "text", f"not UTF-8 (byte {exc.start})") from None
    parser = parser_for(path, text)
    if parser == JSON:
        return _from_json(path, text)
    try:
        return parse_canvas_code(text).canvas
    except CanvasParseError as exc:
        raise CanvasFileError(path, CODE, str(exc)) from None
