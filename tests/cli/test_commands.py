"""The ``omost`` command line without the services: arguments, canvas files, errors a user can read,
which stack a command talks to, and what it prints."""

from __future__ import annotations

import ast
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from shared import canvas_to_code, parse_canvas_code
from shared.cli import commands
from shared.cli.commands import app, read_canvas, services
from shared.cli.display import Activity, changes_line, show_canvas
from shared.cli.errors import error_line
from shared.cli.memory import Conversation, recall, remember
from shared.cli.options import RenderOptions
from shared.cli.stack import free_port, last_error
from shared.cli.state import ServeState, remove_state, running_stack, serve_lock, write_state
from shared.client import OmostAPIError
from shared.plans import CanvasChanges

FIXTURE = Path(__file__).parents[1] / "fixtures" / "omost_outputs" / "01_dragon_battle.md"
SHARED = Path(__file__).parents[2] / "shared"
runner = CliRunner()


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Commands read and write the cache folder (last conversation, serve's state): never the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("OMOST_RENDER_MODEL", "OMOST_PLANNER_URL", "OMOST_RENDER_URL", "OMOST_REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "cache" / "omost"


@pytest.fixture()
def canvas_file(tmp_path: Path) -> Path:
    path = tmp_path / "canvas.md"
    path.write_text(FIXTURE.read_text())
    return path


@pytest.fixture()
def healthz() -> Iterator[str]:
    """A real HTTP server that answers ``/healthz`` like a service does (only that)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 404)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_cli_imports_no_service() -> None:
    """``shared`` is the contract and the face on top of it: no import of either service, even lazily."""
    offenders = []
    for path in SHARED.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            services = ("render_service", "planner_service")
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in services]
    assert offenders == []


def test_unreachable_service_is_one_clear_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = runner.invoke(app, ["plan", "a cat", "--url", url])
    assert result.exit_code == 1
    assert f"cannot reach {url}/v1/plans" in result.output
    assert "Traceback" not in result.output


def test_render_without_a_model_or_url_says_what_to_pass(canvas_file: Path) -> None:
    result = runner.invoke(app, ["render", str(canvas_file)])
    assert result.exit_code == 2
    assert "--model" in result.output and "--tiny" in result.output and "OMOST_RENDER_MODEL" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_serve_without_a_model_says_what_to_pass_and_exits_2() -> None:
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "--model" in result.output and "--tiny" in result.output and "OMOST_RENDER_MODEL" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_canvas_files_in_json_code_or_api_answer_form(tmp_path: Path) -> None:
    canvas = parse_canvas_code(FIXTURE.read_text()).canvas
    as_json = tmp_path / "canvas.json"
    as_json.write_text(canvas.model_dump_json())
    as_answer = tmp_path / "plan.json"
    as_answer.write_text('{"canvas": ' + canvas.model_dump_json() + ', "code": "..."}')
    as_code = tmp_path / "canvas.py"
    as_code.write_text(canvas_to_code(canvas))
    assert read_canvas(as_json) == read_canvas(as_answer) == read_canvas(as_code) == canvas


def test_bad_render_parameters_are_one_readable_line_before_any_work(canvas_file: Path) -> None:
    result = runner.invoke(app, ["render", str(canvas_file), "--width", "100", "--tiny"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: width must be a multiple of 8 (got 100)"
    result = runner.invoke(app, ["render", str(canvas_file), "--steps", "0", "--height", "4096", "--tiny"])
    assert result.exit_code == 1
    assert "height must be at most 2048 (got 4096)" in result.output
    assert "steps must be at least 1 (got 0)" in result.output
    assert "pydantic" not in result.output


def test_service_errors_are_their_detail_as_written() -> None:
    detail = "invalid request: body.render.width: Value error, must be a multiple of 8"
    assert error_line(OmostAPIError(422, detail, {"detail": detail, "errors": []})) == detail


def test_tiny_defaults_are_small_and_the_others_omosts() -> None:
    assert RenderOptions().sampling(tiny=True).width == 256
    assert RenderOptions().sampling(tiny=True).height == 256
    assert RenderOptions().sampling(tiny=False).width == 896
    assert RenderOptions(width=512).sampling(tiny=True).width == 512


def test_edit_changes_summary() -> None:
    changes = {
        "global_fields": [],
        "regions": [
            {"kind": "added", "index": 3, "description": "a cat", "fields": []},
            {"kind": "changed", "index": 2, "description": "a dog", "fields": ["description"]},
            {"kind": "removed", "index": 0, "description": "a tree", "fields": []},
        ],
    }
    line = changes_line(CanvasChanges.model_validate(changes))
    assert line == "changed: +1 region, ~region 2 (description), -region 0"
    assert changes_line(CanvasChanges(global_fields=["description"])) == "changed: ~global (description)"
    assert changes_line(CanvasChanges()) == "changed: nothing"
    assert changes_line(None) is None


def test_piped_output_is_not_cut_at_80_columns(tmp_path: Path) -> None:
    canvas = parse_canvas_code(FIXTURE.read_text()).canvas
    out = tmp_path / "stderr.txt"
    with out.open("w") as file:
        show_canvas(Console(file=file, width=80), canvas)
    text = out.read_text()
    for region in canvas.local_descriptions:
        assert region.description in text  # whole, on one line


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path) -> None:
    out = tmp_path / "stderr.txt"
    with out.open("w") as file, Activity(Console(file=file), "render", plain_every=0.3) as activity:
        activity.update("queued: 2 job(s) ahead")
        threading.Event().wait(1.8)
    lines = out.read_text().splitlines()
    assert 3 <= len(lines) <= 5
    assert all(line.startswith("render: queued: 2 job(s) ahead, ") and line.endswith(" s") for line in lines)


def test_a_served_stack_is_used_and_a_stale_one_ignored(private_cache: Path, healthz: str) -> None:
    private_cache.mkdir(parents=True, exist_ok=True)
    write_state(private_cache, ServeState(os.getpid(), healthz, healthz + "/r", "redis://x", "tiny"))
    served = running_stack(private_cache)
    assert served is not None and served.tiny
    with services(None, None, need_planner=True, need_render=True) as ends:
        assert (ends.planner, ends.render, ends.tiny) == (healthz, healthz + "/r", True)
    # Its process is gone: stale, whatever answers at the address.
    write_state(private_cache, ServeState(2**22 + 12345, healthz, healthz, "redis://x"))
    assert running_stack(private_cache) is None
    # Its process lives but nothing answers: stale too.
    write_state(private_cache, ServeState(os.getpid(), f"http://127.0.0.1:{free_port()}", "", "redis://x"))
    assert running_stack(private_cache) is None
    remove_state(private_cache, os.getpid())
    assert not (private_cache / "serve.json").exists()


def test_edit_goes_back_to_the_planner_it_remembers(private_cache: Path, healthz: str) -> None:
    private_cache.mkdir(parents=True, exist_ok=True)
    remember(private_cache, Conversation(planner_url=healthz).followed_by(
        "a cat", "canvas = Canvas()", planner_url=healthz, conversation_id=None))
    last = recall(private_cache)
    assert last is not None and len(last.history) == 2
    with services(None, None, need_planner=True, need_render=False, remembered=last.planner_url) as ends:
        assert ends.planner == healthz


def test_a_worker_that_cannot_load_its_model_is_one_line(tmp_path: Path) -> None:
    log = tmp_path / "render-worker-0.log"
    log.write_text('{"level": "INFO", "msg": "starting"}\n'
                   '{"level": "ERROR", "msg": "cannot load the model", "model": "nope/nope", '
                   '"error": "model \'nope/nope\' not found: no local file or folder at /x/nope/nope"}\n')
    expected = "cannot load the model: model 'nope/nope' not found: no local file or folder at /x/nope/nope"
    assert last_error(log) == expected


def test_console_is_stderr() -> None:
    assert commands.console.stderr


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["generate", "", "--tiny"], "error: prompt: string should have at least 1 character (got '')"),
        (["generate", "x" * 5000, "--tiny"],
         "error: prompt: string should have at most 4000 characters (got 5,000 characters)"),
        (["generate", "   ", "--tiny"], "error: prompt: the prompt is empty"),
        (["generate", "a cat", "--tiny", "--max-new-tokens", "3"], "error: max_new_tokens must be at least 16 (got 3)"),
        (["generate", "a cat", "--tiny", "--steps", "999"], "error: steps must be at most 150 (got 999)"),
        (["plan", ""], "error: prompt: string should have at least 1 character (got '')"),
        (["plan", "a cat", "--seed", "-1"], "error: seed must be at least 0 (got -1)"),
    ],
    ids=["empty", "too-long", "blank", "tokens", "steps", "plan-empty", "plan-seed"],
)
def test_every_field_the_contract_checks_is_refused_before_any_stack_starts(
    argv: list[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ``serve`` runs and no --url is given: a bad request must not start a temporary stack (72 s
    to be told the prompt is empty), so starting one fails the test."""

    def no_stack(self: object, *args: object, **kwargs: object) -> None:
        raise AssertionError("a stack was started for a request the contract refuses")

    monkeypatch.setattr(commands.LocalStack, "start", no_stack)
    result = runner.invoke(app, argv)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == expected


def test_an_edit_is_checked_before_any_stack_starts(private_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    private_cache.mkdir(parents=True, exist_ok=True)
    remember(private_cache, Conversation(planner_url=f"http://127.0.0.1:{free_port()}").followed_by(
        "a cat", "canvas = Canvas()", planner_url=f"http://127.0.0.1:{free_port()}", conversation_id=None))
    monkeypatch.setattr(commands.LocalStack, "start", lambda *a, **k: pytest.fail("a stack was started"))
    result = runner.invoke(app, ["edit", " \n"])
    assert result.exit_code == 1
    assert result.output.strip() == "error: prompt: the prompt is empty"


def test_a_second_serve_is_refused_naming_the_first(
    private_cache: Path, healthz: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first ``serve`` is this test holding the lock (as a running ``serve`` does) with its state
    written; the second must neither start a stack nor touch the first one's state file."""
    private_cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(commands.LocalStack, "start", lambda *a, **k: pytest.fail("a second stack was started"))
    first = ServeState(os.getpid(), healthz, healthz + "/r", "redis://x", "tiny")
    with serve_lock(private_cache):
        write_state(private_cache, first)
        result = runner.invoke(app, ["serve", "--tiny", "--planner-port", str(free_port())])
        assert running_stack(private_cache) == first
    assert result.exit_code == 2
    line = result.output.strip()
    assert line.startswith(f"error: `omost serve` is already running (pid {os.getpid()}: planner {healthz}, ")
    assert "Stop it first" in line and len(result.output.strip().splitlines()) == 1
    with serve_lock(private_cache):  # released by the first: a new serve may start
        pass


def test_version() -> None:
    from importlib import metadata

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"omost {metadata.version('omost-service')}"


def test_plan_seed_help_speaks_of_the_plan_not_images() -> None:
    for command in ("plan", "edit"):
        text = " ".join(runner.invoke(app, [command, "--help"]).output.replace("│", " ").split())
        assert "image i uses seed" not in text and "the same seed, the same plan" in text


def test_omost_cache_dir_moves_state_and_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's table says OMOST_CACHE_DIR holds the state, the private Redis's data and the tiny model."""
    from shared.cli.stack import cache_dir

    monkeypatch.setenv("OMOST_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere" and cache_dir().is_dir()
    remember(cache_dir(), Conversation(planner_url="http://x").followed_by(
        "a cat", "canvas = Canvas()", planner_url="http://x", conversation_id=None))
    assert (tmp_path / "elsewhere" / "last_conversation.json").exists()


def test_a_tiny_stack_serves_small_defaults_to_the_playground_and_the_images_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``serve --tiny`` renders 256² from the CLI; the playground's form and the Images API's "auto"
    must start there too, from the server's own config (the planner app, in process: no LLM needed)."""
    from fastapi.testclient import TestClient

    from planner_service.app import create_app
    from planner_service.settings import PlannerSettings
    from shared.cli.options import tiny_stack_env

    monkeypatch.delenv("OMOST_PLANNER_IMAGES_DEFAULT_SIZE", raising=False)
    monkeypatch.delenv("OMOST_PLANNER_PLAYGROUND_DEFAULT_SIZE", raising=False)
    assert tiny_stack_env(False) == {}
    for name, value in tiny_stack_env(True).items():
        monkeypatch.setenv(name, value)
    config = TestClient(create_app(PlannerSettings())).get("/playground/config.json").json()
    assert (config["render_defaults"]["width"], config["render_defaults"]["height"]) == (256, 256)
    monkeypatch.setenv("OMOST_PLANNER_IMAGES_DEFAULT_SIZE", "512x512")  # the user's own setting wins
    assert "OMOST_PLANNER_IMAGES_DEFAULT_SIZE" not in tiny_stack_env(True)
