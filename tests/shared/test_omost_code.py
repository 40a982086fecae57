"""Parsing Omost's code form without executing it, and writing it back."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import given, settings

from shared import CanvasParseError, CanvasTruncatedError, canvas_to_code, parse_canvas_code
from shared.canvas import MAX_LOCAL_DESCRIPTIONS, Canvas
from tests.shared.canvas_strategies import canvases

FIXTURES = Path(__file__).parents[1] / "fixtures" / "omost_outputs"

HEADER = "canvas = Canvas()\n"
GLOBAL = (
    "canvas.set_global_description(description='A cat.', detailed_descriptions=['Fluffy.'], "
    "tags='cat', HTML_web_color_name='white')\n"
)
LOCAL = (
    "canvas.add_local_description(location='on the left', offset='no offset', area='a small square area', "
    "distance_to_viewer=2.0, description='A dog.', detailed_descriptions=[], tags='dog', atmosphere='calm', "
    "style='photo', quality_meta='sharp', HTML_web_color_name='brown')\n"
)


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("name", "regions", "first_description"),
    [
        ("01_dragon_battle.md", 4, "A group of fierce warriors."),
        ("02_dragon_to_dinosaur_edit.md", 4, "A group of fierce warriors."),
        ("03_happy_childrens_day.md", 5, None),
    ],
)
def test_real_omost_outputs_parse(name: str, regions: int, first_description: str | None) -> None:
    result = parse_canvas_code(fixture_text(name))
    canvas = result.canvas
    assert len(canvas.local_descriptions) == regions
    assert result.corrections == []
    assert not result.truncated
    if first_description:
        assert canvas.local_descriptions[0].description == first_description
    for region in canvas.local_descriptions:
        assert region.distance_to_viewer > 0
        assert region.detailed_descriptions


def test_fixture_details_keep_quotes_and_curly_apostrophes() -> None:
    canvas = parse_canvas_code(fixture_text("01_dragon_battle.md")).canvas
    dragon = canvas.local_descriptions[1]
    assert dragon.description == "A mighty dragon."
    assert "The dragon's eyes burn with a fierce intensity, and its teeth are sharp and menacing." in (
        dragon.detailed_descriptions
    )
    assert any("dragon’s body" in d for d in dragon.detailed_descriptions)


def test_edit_fixture_changes_what_the_user_asked() -> None:
    before = parse_canvas_code(fixture_text("01_dragon_battle.md")).canvas
    after = parse_canvas_code(fixture_text("02_dragon_to_dinosaur_edit.md")).canvas
    assert "dragon" in before.global_description.description
    assert "dinosaur" in after.global_description.description
    meta = json.loads((FIXTURES / "02_dragon_to_dinosaur_edit.json").read_text())
    assert meta["follows"]


def test_bare_code_and_text_around_fence() -> None:
    bare = parse_canvas_code(HEADER + GLOBAL + LOCAL).canvas
    fenced = parse_canvas_code("Sure! Here it is:\n```python\n" + HEADER + GLOBAL + LOCAL + "```\nEnjoy.").canvas
    assert bare == fenced
    assert bare.local_descriptions[0].HTML_web_color_name == "brown"


def test_positional_arguments_and_concatenation_and_int_distance() -> None:
    code = HEADER + (
        "canvas.set_global_description('A ' 'cat.', [\"It's fluffy.\", 'Very \\'soft\\'.'], 'cat', 'white')\n"
        "canvas.add_local_description('on the left', 'no offset', 'a small square area', 3, 'A dog.', [], "
        "'dog', 'calm', 'photo', 'sharp', HTML_web_color_name='brown')\n"
    )
    canvas = parse_canvas_code(code).canvas
    assert canvas.global_description.description == "A cat."
    assert canvas.global_description.detailed_descriptions == ["It's fluffy.", "Very 'soft'."]
    assert canvas.local_descriptions[0].distance_to_viewer == 3.0


def test_near_miss_values_are_corrected_and_reported() -> None:
    code = HEADER + GLOBAL + LOCAL.replace("'on the left'", "'On the lefft'").replace("'brown'", "'Browne'")
    result = parse_canvas_code(code)
    region = result.canvas.local_descriptions[0]
    assert region.location == "on the left"
    assert region.HTML_web_color_name == "brown"
    assert {(c.field, c.original, c.corrected) for c in result.corrections} == {
        ("location", "On the lefft", "on the left"),
        ("HTML_web_color_name", "Browne", "brown"),
    }
    assert all(c.line == 3 for c in result.corrections)


def test_strict_mode_rejects_near_misses() -> None:
    code = HEADER + GLOBAL + LOCAL.replace("'on the left'", "'on the lefft'")
    with pytest.raises(CanvasParseError, match="did you mean 'on the left'"):
        parse_canvas_code(code, strict=True)


def test_hopeless_enum_value_lists_allowed_values() -> None:
    code = HEADER + GLOBAL + LOCAL.replace("'a small square area'", "'zzzzzz'")
    with pytest.raises(CanvasParseError, match="area 'zzzzzz' is not one of 'a small square area'") as info:
        parse_canvas_code(code)
    assert info.value.line == 3


HOSTILE = {
    "import": "import os\n" + HEADER + GLOBAL,
    "from import": "from os import system\n" + HEADER + GLOBAL,
    "other call": HEADER + GLOBAL + "print('hi')\n",
    "attribute chain": HEADER + "canvas.__class__.__init__(1)\n" + GLOBAL,
    "dunder method": HEADER + "canvas.__init__()\n" + GLOBAL,
    "other object": HEADER + "os.system('rm -rf /')\n" + GLOBAL,
    "f-string": HEADER + GLOBAL.replace("'A cat.'", "f'{__import__(\"os\")}'"),
    "comprehension": HEADER + GLOBAL.replace("['Fluffy.']", "[x for x in 'ab']"),
    "lambda": HEADER + GLOBAL.replace("'cat'", "(lambda: 'cat')()"),
    "arithmetic bomb": HEADER + LOCAL.replace("2.0", "9**9**9") + GLOBAL,
    "name argument": HEADER + GLOBAL.replace("'cat'", "tags_var"),
    "assignment": HEADER + "x = 1\n" + GLOBAL,
    "reassign canvas": HEADER + "canvas = Canvas2()\n" + GLOBAL,
    "function def": HEADER + "def f():\n    pass\n" + GLOBAL,
    "class def": HEADER + "class A:\n    pass\n" + GLOBAL,
    "with": HEADER + "with open('/etc/passwd') as f:\n    pass\n" + GLOBAL,
    "loop": HEADER + "for i in range(9):\n    " + GLOBAL,
    "starred": HEADER + "canvas.set_global_description(*['a'])\n",
    "double star": HEADER + "canvas.set_global_description(**{'description': 'a'})\n",
    "walrus": HEADER + GLOBAL.replace("'cat'", "(y := 'cat')"),
    "subscript": HEADER + GLOBAL.replace("'cat'", "'cat'[0]"),
    "dict": HEADER + GLOBAL.replace("['Fluffy.']", "{'a': 1}"),
    "bool distance": HEADER + GLOBAL + LOCAL.replace("2.0", "True"),
    "negative distance": HEADER + GLOBAL + LOCAL.replace("2.0", "-2.0"),
    "zero distance": HEADER + GLOBAL + LOCAL.replace("2.0", "0"),
    "megabyte string": HEADER + GLOBAL.replace("'cat'", "'" + "a" * 1_000_000 + "'"),
    "long string": HEADER + GLOBAL.replace("'cat'", "'" + "a" * 5000 + "'"),
    "deep nesting": HEADER + GLOBAL.replace("['Fluffy.']", "[" * 5000 + "]" * 5000),
    "no canvas": GLOBAL,
    "no global": HEADER + LOCAL,
    "global twice": HEADER + GLOBAL + GLOBAL,
    "unknown keyword": HEADER + GLOBAL.replace("tags=", "tagz="),
    "missing argument": HEADER + GLOBAL.replace("tags='cat', ", ""),
    "wrong method": HEADER + GLOBAL.replace("set_global_description", "remove_everything"),
    "syntax error": HEADER + GLOBAL + "canvas.add_local_description(location=='x')\n",
    "not text": None,
    "empty": "",
    "too many regions": HEADER + GLOBAL + LOCAL * (MAX_LOCAL_DESCRIPTIONS + 1),
    "list of numbers": HEADER + GLOBAL.replace("['Fluffy.']", "[1, 2]"),
    "list as tags": HEADER + GLOBAL.replace("'cat'", "['cat']"),
    "await": HEADER + GLOBAL + "await canvas.add_local_description()\n",
    "global statement": HEADER + "global canvas\n" + GLOBAL,
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_code_is_rejected_quickly_with_a_message(name: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CanvasParseError) as info:
        parse_canvas_code(HOSTILE[name])  # type: ignore[arg-type]
    assert time.perf_counter() - started < 2.0, "the parser must bound its work"
    assert isinstance(info.value, ValueError)
    assert str(info.value)  # a message a user can act on


# Code that leaves a trace if anything runs it: each writes the file named by {marker} at a different point
# (an import, an argument, an f-string, a default, a class body, a statement after valid calls, ...).
TOUCH = "__import__('pathlib').Path({marker}).touch()"
CANARIES = {
    "import": "import pathlib\npathlib.Path({marker}).touch()\n" + HEADER + GLOBAL,
    "call as argument": HEADER + GLOBAL.replace("'cat'", f"{TOUCH} or 'cat'"),
    "f-string": HEADER + GLOBAL.replace("'A cat.'", f'f"{{{TOUCH}}} A cat."'),
    "lambda": HEADER + GLOBAL.replace("'cat'", f"(lambda: {TOUCH} or 'cat')()"),
    "comprehension": HEADER + GLOBAL.replace("['Fluffy.']", f"[{TOUCH} or 'Fluffy.' for _ in 'a']"),
    "walrus": HEADER + GLOBAL.replace("'cat'", f"(t := {TOUCH} or 'cat')"),
    "with open": "with open({marker}, 'w'):\n    pass\n" + HEADER + GLOBAL,
    "default argument": f"def f(x={TOUCH}):\n    pass\n" + HEADER + GLOBAL,
    "class body": f"class A:\n    {TOUCH}\n" + HEADER + GLOBAL,
    "after valid calls": HEADER + GLOBAL + LOCAL + f"{TOUCH}\n",
    "attribute of the canvas": HEADER + GLOBAL + f"canvas.__class__.__name__ and {TOUCH}\n",
}
TRUNCATED_TAIL = "canvas.add_local_description(location='on th"


def _canary(name: str, marker: Path) -> str:
    return CANARIES[name].replace("{marker}", repr(str(marker)))


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_parsing_code_never_runs_it(name: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(CanvasParseError):
        parse_canvas_code(_canary(name, marker))
    # Output cut off by a token limit takes another path: the statements before the cut are read on their own.
    with pytest.raises(CanvasParseError):
        parse_canvas_code(_canary(name, marker) + TRUNCATED_TAIL, allow_partial=True)
    assert not marker.exists(), "the parser ran part of the code"


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_the_canaries_leave_their_trace_when_run(name: str, tmp_path: Path) -> None:
    """The control for the test above: run as Omost runs model output, each canary does write its file."""

    class Canvas:
        def set_global_description(self, **arguments: object) -> None:
            pass

        def add_local_description(self, **arguments: object) -> None:
            pass

    marker = tmp_path / "ran"
    exec(_canary(name, marker), {"Canvas": Canvas})  # test-written code, never model output
    assert marker.exists()


def test_error_names_line_and_column() -> None:
    with pytest.raises(CanvasParseError) as info:
        parse_canvas_code("```python\n" + HEADER + "import os\n" + GLOBAL + "```")
    assert info.value.line == 3
    assert info.value.column == 1
    assert str(info.value).startswith("line 3, column 1:")


def test_truncated_output_names_last_complete_call() -> None:
    full = fixture_text("01_dragon_battle.md")
    cut = full[: full.index("# Add a mighty dragon.") + 200]
    with pytest.raises(CanvasTruncatedError) as info:
        parse_canvas_code(cut)
    assert "add_local_description on line" in str(info.value)
    assert info.value.last_complete_call is not None
    partial = parse_canvas_code(cut, allow_partial=True)
    assert partial.truncated
    assert [r.description for r in partial.canvas.local_descriptions] == ["A group of fierce warriors."]


def test_truncated_before_any_call_is_an_error_even_when_partial_allowed() -> None:
    with pytest.raises(CanvasTruncatedError, match="no call was completed"):
        cut = "```python\ncanvas = Canvas()\ncanvas.set_global_description(\n    description='A"
        parse_canvas_code(cut, strict=True, allow_partial=True)


def test_canvas_to_code_reads_like_the_model() -> None:
    canvas = parse_canvas_code(fixture_text("01_dragon_battle.md")).canvas
    code = canvas_to_code(canvas)
    assert code.startswith("```python\n# Initialize the canvas\ncanvas = Canvas()\n")
    assert "\n# Add a mighty dragon.\ncanvas.add_local_description(\n    location='in the center',\n" in code
    assert "    distance_to_viewer=7.0,\n" in code
    # The model's own text, modulo the fence's trailing newline, is reproduced exactly.
    assert code.strip() == fixture_text("01_dragon_battle.md").strip()


@settings(max_examples=150, deadline=None)
@given(canvases)
def test_round_trip(canvas: Canvas) -> None:
    assert parse_canvas_code(canvas_to_code(canvas)).canvas == canvas
