"""Omost's code form of a canvas, parsed without ever executing it, and written back.

An Omost LLM answers with Python that builds a ``Canvas``. Omost runs it with ``exec``: anyone who
can steer the model (prompt injection) then runs code on the server. Here the text is parsed with
``ast`` and only a whitelist is accepted: ``canvas = Canvas()``, calls of the two methods on that
name with literal arguments, comments and blank lines. Everything else is a ``CanvasParseError``
naming the line and what was wrong.
"""

from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from shared.canvas import (
    ENUM_TABLES,
    GLOBAL_ARGUMENTS,
    LOCAL_ARGUMENTS,
    Canvas,
    GlobalDescription,
    LocalDescription,
)

MAX_CODE_CHARS = 200_000
"""Real Omost answers are under 10 kB; this bounds the parser's work on hostile input."""

CANVAS_NAME = "canvas"
SET_GLOBAL = "set_global_description"
ADD_LOCAL = "add_local_description"
METHODS: dict[str, tuple[str, ...]] = {SET_GLOBAL: GLOBAL_ARGUMENTS, ADD_LOCAL: LOCAL_ARGUMENTS}

_FENCE = re.compile(r"```[ \t]*(?:python|py)?[ \t]*\r?\n", re.IGNORECASE)
_STATEMENT_START = re.compile(r"[A-Za-z_]")
_TRUNCATION_HINTS = ("was never closed", "unexpected EOF", "unterminated", "expected an indented block")


class CanvasParseError(ValueError):
    """The text is not a canvas in Omost's code form. ``line``/``column`` are 1-based in the text."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.message = message
        self.line = line
        self.column = column
        where = f"line {line}, column {column}: " if line is not None and column is not None else ""
        where = where or (f"line {line}: " if line is not None else "")
        super().__init__(where + message)


class CanvasTruncatedError(CanvasParseError):
    """The code stops mid-call, as output cut off by a token limit does."""

    def __init__(self, message: str, line: int | None, last_complete_call: str | None) -> None:
        self.last_complete_call = last_complete_call
        super().__init__(message, line)


@dataclass(frozen=True)
class Correction:
    """A near-miss value replaced by the closest valid one, the way Omost does it."""

    line: int
    field: str
    original: str
    corrected: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field} {self.original!r} read as {self.corrected!r}"


@dataclass(frozen=True)
class ParseResult:
    canvas: Canvas
    corrections: list[Correction] = field(default_factory=list)
    truncated: bool = False
    """True only with ``allow_partial``: the canvas holds the calls completed before the cut."""


def extract_code(text: str) -> tuple[str, int, bool]:
    """The code inside the first ```python fence (or the whole text), its first line, and
    whether a fence was opened but never closed (a sign that the output was cut off)."""
    match = _FENCE.search(text)
    if match is None:
        return text, 1, False
    start = match.end()
    first_line = text.count("\n", 0, start) + 1
    end = text.find("```", start)
    if end == -1:
        return text[start:], first_line, True
    return text[start:end], first_line, False


def _closest(value: str, options: tuple[str, ...]) -> str | None:
    lowered = value.strip().lower()
    if lowered in options:
        return lowered
    matches = difflib.get_close_matches(lowered, options, n=1, cutoff=0.5)
    return matches[0] if matches else None


class _Reader:
    """Walks the module's statements and turns the whitelisted calls into model arguments."""

    def __init__(self, line_offset: int, strict: bool) -> None:
        self.line_offset = line_offset
        self.strict = strict
        self.corrections: list[Correction] = []
        self.global_args: dict[str, Any] | None = None
        self.locals_args: list[dict[str, Any]] = []
        self.last_call: str | None = None
        self.have_canvas = False

    def error(self, node: ast.AST, message: str) -> CanvasParseError:
        line = getattr(node, "lineno", 1) + self.line_offset
        return CanvasParseError(message, line, getattr(node, "col_offset", 0) + 1)

    def read(self, module: ast.Module) -> Canvas:
        for statement in module.body:
            self.statement(statement)
        if self.global_args is None:
            raise CanvasParseError(f"the code never calls {CANVAS_NAME}.{SET_GLOBAL}(...)")
        return self.build()

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Assign):
            self.assignment(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            self.method_call(node.value)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            return  # a bare string literal is a docstring-like comment; it does nothing
        else:
            raise self.error(
                node,
                f"only `{CANVAS_NAME} = Canvas()` and calls of {CANVAS_NAME}.{SET_GLOBAL} / "
                f"{CANVAS_NAME}.{ADD_LOCAL} are allowed, not {type(node).__name__.lower()} statements",
            )

    def assignment(self, node: ast.Assign) -> None:
        target = node.targets[0] if len(node.targets) == 1 else None
        target_ok = isinstance(target, ast.Name) and target.id == CANVAS_NAME
        value = node.value
        value_ok = (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Name)
            and value.func.id == "Canvas"
            and not value.args
            and not value.keywords
        )
        if not (target_ok and value_ok):
            raise self.error(node, f"the only assignment allowed is `{CANVAS_NAME} = Canvas()`")
        if self.have_canvas:
            raise self.error(node, f"`{CANVAS_NAME} = Canvas()` appears twice")
        self.have_canvas = True

    def method_call(self, call: ast.Call) -> None:
        func = call.func
        if not (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)):
            allowed = f"{CANVAS_NAME}.{SET_GLOBAL}(...) and {CANVAS_NAME}.{ADD_LOCAL}(...)"
            raise self.error(call, f"only {allowed} may be called")
        if func.value.id != CANVAS_NAME or func.attr not in METHODS:
            raise self.error(
                call,
                f"`{func.value.id}.{func.attr}` is not allowed; only {CANVAS_NAME}.{SET_GLOBAL} "
                f"and {CANVAS_NAME}.{ADD_LOCAL} may be called",
            )
        if not self.have_canvas:
            raise self.error(call, f"`{CANVAS_NAME}` is used before `{CANVAS_NAME} = Canvas()`")
        arguments = self.arguments(call, func.attr)
        if func.attr == SET_GLOBAL:
            if self.global_args is not None:
                raise self.error(call, f"{SET_GLOBAL} is called more than once")
            self.global_args = arguments
        else:
            self.locals_args.append(arguments)
        self.last_call = f"{func.attr} on line {call.lineno + self.line_offset}"

    def arguments(self, call: ast.Call, method: str) -> dict[str, Any]:
        names = METHODS[method]
        if len(call.args) > len(names):
            raise self.error(call, f"{method} takes {len(names)} arguments, got {len(call.args)}")
        values: dict[str, Any] = {}
        nodes: dict[str, ast.expr] = {}
        for name, node in zip(names, call.args, strict=False):
            if isinstance(node, ast.Starred):
                raise self.error(node, "*arguments are not allowed")
            values[name], nodes[name] = self.literal(node, name), node
        for keyword in call.keywords:
            if keyword.arg is None:
                raise self.error(keyword, "**arguments are not allowed")
            if keyword.arg not in names:
                known = ", ".join(names)
                raise self.error(keyword, f"{method} has no argument {keyword.arg!r}; its arguments are {known}")
            if keyword.arg in values:
                raise self.error(keyword, f"argument {keyword.arg!r} is given twice")
            values[keyword.arg], nodes[keyword.arg] = self.literal(keyword.value, keyword.arg), keyword.value
        missing = [n for n in names if n not in values]
        if missing:
            raise self.error(call, f"{method} is missing {', '.join(missing)}")
        for name, options in ENUM_TABLES.items():
            if name in values:
                values[name] = self.enum(nodes[name], name, values[name], options)
        return values

    def literal(self, node: ast.expr, name: str) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = []
            for item in node.elts:
                if not (isinstance(item, ast.Constant) and isinstance(item.value, str)):
                    raise self.error(item, f"{name} must be a list of plain strings")
                items.append(item.value)
            return items
        if isinstance(node, ast.JoinedStr):
            raise self.error(node, f"{name}: f-strings are not allowed, write a plain string")
        kind = type(node).__name__
        raise self.error(node, f"{name} must be a literal string, number or list of strings, not {kind}")

    def enum(self, node: ast.expr, name: str, value: Any, options: tuple[str, ...]) -> Any:
        if not isinstance(value, str) or value in options:
            return value  # wrong types are reported by the model's validation
        closest = _closest(value, options)
        if closest is None or self.strict:
            shown = ", ".join(repr(o) for o in options[:12]) + (", ..." if len(options) > 12 else "")
            hint = f"; did you mean {closest!r}?" if closest else ""
            raise self.error(node, f"{name} {value!r} is not one of {shown}{hint}")
        self.corrections.append(Correction(node.lineno + self.line_offset, name, value, closest))
        return closest

    def build(self) -> Canvas:
        try:
            glob = GlobalDescription(**(self.global_args or {}))
        except ValidationError as exc:
            raise CanvasParseError(f"{SET_GLOBAL}: {_first_error(exc)}") from None
        regions = []
        for index, arguments in enumerate(self.locals_args):
            try:
                regions.append(LocalDescription(**arguments))
            except ValidationError as exc:
                raise CanvasParseError(f"{ADD_LOCAL} #{index + 1}: {_first_error(exc)}") from None
        try:
            return Canvas(global_description=glob, local_descriptions=regions)
        except ValidationError as exc:
            raise CanvasParseError(_first_error(exc)) from None


def _first_error(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in error["loc"])
    return f"{where}: {error['msg']}" if where else error["msg"]


def _parse_module(code: str, line_offset: int) -> ast.Module:
    try:
        return ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise CanvasParseError(f"not valid Python: {exc.msg}", (exc.lineno or 1) + line_offset, exc.offset) from None
    except (RecursionError, MemoryError, ValueError) as exc:
        raise CanvasParseError(f"the code is too deeply nested or malformed to read ({type(exc).__name__})") from None


def _looks_truncated(code: str, error: CanvasParseError, line_offset: int, fence_open: bool) -> bool:
    if any(hint in error.message for hint in _TRUNCATION_HINTS):
        return True
    last_line = len(code.rstrip().splitlines()) + line_offset
    return fence_open and error.line is not None and error.line >= last_line


def _complete_prefix(code: str, line_offset: int, error_line: int | None) -> ast.Module | None:
    """The module made of the statements before the cut, if one parses.

    Cuts are tried only where a top-level statement starts, nearest the error first, a few times:
    bounded work however long the text is.
    """
    lines = code.splitlines(keepends=True)
    limit = (error_line or len(lines) + line_offset) - line_offset - 1
    starts = [i for i, line in enumerate(lines[: limit + 1]) if _STATEMENT_START.match(line)]
    for cut in reversed(starts[-4:]):
        try:
            return ast.parse("".join(lines[:cut]))
        except (SyntaxError, RecursionError, MemoryError, ValueError):
            continue
    return None


def parse_canvas_code(text: str, strict: bool = False, allow_partial: bool = False) -> ParseResult:
    """Parse an Omost LLM's answer into a ``Canvas`` without executing anything.

    ``strict`` rejects near-miss enum values instead of correcting them; ``allow_partial`` turns
    output cut off mid-call into the canvas made of the calls completed before the cut.
    """
    if not isinstance(text, str):
        raise CanvasParseError(f"expected text, got {type(text).__name__}")
    if len(text) > MAX_CODE_CHARS:
        raise CanvasParseError(f"the code is {len(text)} characters long; at most {MAX_CODE_CHARS} are accepted")
    code, first_line, fence_open = extract_code(text)
    line_offset = first_line - 1
    truncated = False
    try:
        module = _parse_module(code, line_offset)
    except CanvasParseError as error:
        if not _looks_truncated(code, error, line_offset, fence_open):
            raise
        prefix = _complete_prefix(code, line_offset, error.line)
        reader = _Reader(line_offset, strict)
        if prefix is not None:
            for statement in prefix.body:
                reader.statement(statement)
        if not allow_partial or prefix is None or reader.global_args is None:
            last = reader.last_call
            message = "the code stops in the middle of a call, as output cut off by a token limit does; "
            message += f"the last complete call is {last}" if last else "no call was completed"
            raise CanvasTruncatedError(message, error.line, last) from None
        return ParseResult(reader.build(), reader.corrections, truncated=True)
    reader = _Reader(line_offset, strict)
    canvas = reader.read(module)
    return ParseResult(canvas, reader.corrections, truncated)


def _quote(text: str) -> str:
    # A backtick run could close the Markdown fence around the code, so it is written as an escape.
    return repr(text).replace("`", "\\x60")


def _comment(description: str) -> str:
    printable = "".join(ch if ch.isprintable() and ch != "`" else " " for ch in description)
    words = " ".join(printable.split())
    words = words[:1].lower() + words[1:]
    return words if words.endswith(".") else words + "."


def canvas_to_code(canvas: Canvas) -> str:
    """The canvas in Omost's code form, reading like the model's own output (fenced as it writes it)."""
    glob = canvas.global_description
    out = ["```python", "# Initialize the canvas", f"{CANVAS_NAME} = Canvas()", ""]
    out += ["# Set a global description for the canvas", f"{CANVAS_NAME}.{SET_GLOBAL}("]
    out += _arguments(glob.model_dump(), GLOBAL_ARGUMENTS)
    out += [")"]
    for region in canvas.local_descriptions:
        out += ["", f"# Add {_comment(region.description)}", f"{CANVAS_NAME}.{ADD_LOCAL}("]
        out += _arguments(region.model_dump(), LOCAL_ARGUMENTS)
        out += [")"]
    out += ["```"]
    return "\n".join(out)


def _arguments(values: dict[str, Any], names: tuple[str, ...]) -> list[str]:
    lines = []
    for name in names:
        value = values[name]
        if isinstance(value, list):
            lines.append(f"    {name}=[")
            lines += [f"        {_quote(item)}," for item in value]
            lines.append("    ],")
        elif isinstance(value, float):
            lines.append(f"    {name}={value!r},")
        else:
            lines.append(f"    {name}={_quote(value)},")
    return lines
