"""A user's own canvas file (issue 27, point 4): each problem is one line naming the file, the parser
that read it, where (a JSON path or a line) and what is wrong; never the whole canvas printed back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared import parse_canvas_code
from shared.cli import commands
from shared.cli.canvas_file import CanvasFileError, read_canvas

FIXTURE = Path(__file__).parents[1] / "fixtures" / "omost_outputs" / "01_dragon_battle.md"
CANVAS = parse_canvas_code(FIXTURE.read_text()).canvas.model_dump(mode="json")


def write(tmp_path: Path, name: str, content: object) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def problem(path: Path) -> str:
    with pytest.raises(CanvasFileError) as caught:
        read_canvas(path)
    return str(caught.value)


def test_a_region_missing_a_field_names_its_json_path(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(CANVAS))
    del broken["local_descriptions"][1]["location"]
    path = write(tmp_path, "canvas.json", broken)
    assert problem(path) == f"{path} (JSON): local_descriptions[1].location: field required"


def test_a_missing_global_description_does_not_print_the_canvas(tmp_path: Path) -> None:
    broken = {k: v for k, v in CANVAS.items() if k != "global_description"}
    path = write(tmp_path, "canvas.json", broken)
    assert problem(path) == f"{path} (JSON): global_description: field required"
    # The same inside an API answer ({"canvas": ..., "code": ...}), with the path from the top.
    path = write(tmp_path, "plan.json", {"canvas": broken, "code": "..."})
    assert problem(path) == f"{path} (JSON): canvas.global_description: field required"


def test_a_bad_value_is_quoted_short(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(CANVAS))
    broken["local_descriptions"][0]["distance_to_viewer"] = -3
    path = write(tmp_path, "canvas.json", broken)
    assert problem(path) == f"{path} (JSON): local_descriptions[0].distance_to_viewer must be more than 0.0 (got -3)"


def test_a_truncated_json_file_is_a_json_error_not_omost_code(tmp_path: Path) -> None:
    text = json.dumps(CANVAS, indent=2)
    path = write(tmp_path, "canvas.json", text[: len(text) // 2])
    message = problem(path)
    assert message.startswith(f"{path} (JSON): not valid JSON: ") and " at line " in message
    assert "code" not in message
    # Picked by content too: JSON in a file named .md is read as JSON.
    assert problem(write(tmp_path, "canvas.md", text[:100])).startswith(f"{tmp_path / 'canvas.md'} (JSON): ")


def test_omost_code_errors_name_the_parser_and_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "canvas.py", "canvas = Canvas()\nimport os\n")
    assert problem(path).startswith(f"{path} (Omost code): line 2")
    array = write(tmp_path, "x.json", "[1, 2]")
    assert problem(array) == f"{array} (JSON): (top level): a canvas is a JSON object, not array"


def test_the_command_says_it_in_one_line_before_any_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(commands.LocalStack, "start", lambda *a, **k: pytest.fail("a stack was started"))
    broken = {k: v for k, v in CANVAS.items() if k != "global_description"}
    path = write(tmp_path, "canvas.json", broken)
    result = CliRunner().invoke(commands.app, ["render", str(path), "--tiny"])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {path} (JSON): global_description: field required"
