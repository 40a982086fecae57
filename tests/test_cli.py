"""The ``omost`` command line without services: arguments, canvas files, errors a user can read."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from shared import canvas_to_code, parse_canvas_code
from shared.cli.commands import app, read_canvas
from shared.cli.stack import free_port

FIXTURE = Path(__file__).parent / "fixtures" / "omost_outputs" / "01_dragon_battle.md"
runner = CliRunner()


def test_unreachable_service_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["plan", "a cat", "--url", url])
    assert result.exit_code == 1
    assert f"cannot reach {url}/v1/plans" in result.output
    assert "Traceback" not in result.output


def test_render_without_a_model_or_url_says_what_to_pass(tmp_path: Path) -> None:
    canvas_file = tmp_path / "canvas.md"
    canvas_file.write_text(FIXTURE.read_text())
    result = runner.invoke(app, ["render", str(canvas_file)], env={"OMOST_RENDER_URL": ""})
    assert result.exit_code != 0
    assert "--model" in result.output and "--tiny" in result.output


def test_canvas_files_in_json_code_or_api_answer_form(tmp_path: Path) -> None:
    canvas = parse_canvas_code(FIXTURE.read_text()).canvas
    as_json = tmp_path / "canvas.json"
    as_json.write_text(canvas.model_dump_json())
    as_answer = tmp_path / "plan.json"
    as_answer.write_text('{"canvas": ' + canvas.model_dump_json() + ', "code": "..."}')
    as_code = tmp_path / "canvas.py"
    as_code.write_text(canvas_to_code(canvas))
    assert read_canvas(as_json) == read_canvas(as_answer) == read_canvas(as_code) == canvas


def test_bad_render_parameters_are_refused_before_any_work(tmp_path: Path) -> None:
    canvas_file = tmp_path / "canvas.md"
    canvas_file.write_text(FIXTURE.read_text())
    result = runner.invoke(app, ["render", str(canvas_file), "--width", "100", "--tiny"])
    assert result.exit_code == 1
    assert "multiple of 8" in result.output
