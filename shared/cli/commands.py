"""``omost`` commands. Each talks to services through ``shared.client``: those named by ``--url``,
else the stack of a running ``omost serve``, else a temporary local stack (``shared.cli.stack``)
started for the duration of the command."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console

from shared.canvas import Canvas, GlobalDescription
from shared.cli.display import (
    Activity,
    changes_line,
    plan_with_progress,
    render_with_progress,
    report,
    say,
    show_canvas,
    show_corrections,
)
from shared.cli.errors import friendly_errors
from shared.cli.mcp import mcp_command
from shared.cli.memory import Conversation, recall, remember
from shared.cli.options import (
    AsJson,
    LlmUrl,
    MaxNewTokens,
    Model,
    Output,
    PlannerUrl,
    RenderOptions,
    RenderUrl,
    Seed,
    Tiny,
    Token,
    with_render_options,
)
from shared.cli.stack import LocalStack, StackConfig, cache_dir, cuda_device_count, free_port
from shared.cli.state import ServeState, remove_state, running_stack, write_state
from shared.cli.vllm import EAGER, VllmServer
from shared.client import OmostClient
from shared.jobs import RenderJob, RenderRequest
from shared.omost_code import canvas_to_code, parse_canvas_code
from shared.plans import PlanResult

app = typer.Typer(help="LLM-planned, region-controlled image generation (Omost, as services).", no_args_is_help=True)
console = Console(stderr=True)
errors = friendly_errors(console)

TINY_MODEL = "tiny"
"""The model name the render worker builds itself: random weights, offline (render_service's loader)."""
NO_MODEL = (
    "say which SDXL model to render with: --model <hub id, diffusers folder or .safetensors>, "
    "--tiny (offline random-weight smoke model), or OMOST_RENDER_MODEL"
)
_PLACEHOLDER = Canvas(global_description=GlobalDescription(description="placeholder", HTML_web_color_name="white"))


def usage_error(message: str) -> typer.Exit:
    say(console, f"[red]error:[/] {message}")
    return typer.Exit(2)


@dataclass(frozen=True)
class Endpoints:
    planner: str | None
    render: str | None
    tiny: bool
    """The renderer runs the tiny model: sizes default small."""


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url.rstrip('/')}/healthz", timeout=2.0).is_success
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def services(
    planner_url: str | None, render_url: str | None, *, need_planner: bool, need_render: bool,
    model: str | None = None, tiny: bool = False, llm_url: str | None = None, remembered: str | None = None,
) -> Iterator[Endpoints]:
    """The given URLs; else ``remembered`` if it answers; else ``omost serve``'s; else a temporary stack."""
    missing_planner = need_planner and not planner_url
    missing_render = need_render and not render_url and not planner_url
    if not (missing_planner or missing_render):
        yield Endpoints(planner_url, render_url, tiny)
        return
    if remembered and not need_render and _answers(remembered):
        say(console, f"[dim]using the planner of the last conversation, {remembered}[/]")
        yield Endpoints(remembered, None, tiny)
        return
    if served := running_stack(cache_dir()):
        say(console, f"[dim]using the stack of `omost serve` (pid {served.pid}): {served.planner_url}, "
                     f"{served.render_url}, model {served.model or '?'}[/]")
        yield Endpoints(planner_url or served.planner_url, render_url or served.render_url, served.tiny)
        return
    if need_render and not (model or tiny or os.environ.get("OMOST_RENDER_MODEL")):
        raise usage_error(f"no running stack (`omost serve`) and no --url: {NO_MODEL}")
    config = StackConfig(
        planner_port=free_port(), render_port=free_port(), model=TINY_MODEL if tiny else model, llm_url=llm_url,
        planner=need_planner, render=need_render,
    )
    if tiny and need_render:
        say(console, "[yellow]--tiny: random weights, offline. The images are noise; the pipeline is real.[/]")
    stack = LocalStack(config)
    started = time.perf_counter()
    with Activity(console, "starting a temporary local stack (`omost serve` keeps one running)"):
        stack.start()
    try:
        say(console, f"[dim]stack ready in {time.perf_counter() - started:.1f} s[/]")
        yield Endpoints(stack.planner_url if need_planner else None, stack.render_url if need_render else None, tiny)
    finally:
        stack.stop()


class LocalLlm(str, enum.Enum):
    embedded = "embedded"
    vllm = "vllm"


def local_vllm(llm: LocalLlm, model: str | None, llm_url: str | None) -> VllmServer | None:
    """The vLLM server ``serve --llm vllm`` starts (on loopback: only the planner talks to it), or None;
    a wrong combination is a usage error."""
    if llm is LocalLlm.embedded:
        if model:
            raise usage_error("--llm-model names the model of --llm vllm (the embedded LLM takes "
                              "OMOST_PLANNER_GGUF_PATH)")
        return None
    if llm_url:
        raise usage_error("--llm vllm starts a vLLM server; --llm-url names one already running: pass one of them")
    if not model:
        raise usage_error("--llm vllm needs --llm-model: an HF folder (scripts/setup_vllm.sh converts SmolLM2 to "
                          "one) or a hub id such as lllyasviel/omost-llama-3-8b")
    # Without a GPU, no torch.compile: vLLM 0.32's CPU build recompiles on every start (minutes; its
    # compile cache fails to load) and decodes a small model about as fast eagerly (docs/planner.md).
    return VllmServer(model, free_port(), extra_args=() if cuda_device_count() else (EAGER,))


def write_images(client: OmostClient, job: RenderJob, output: Path) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(job.urls.images)):
        path = output if index == 0 else output.with_name(f"{output.stem}-{index}{output.suffix}")
        path.write_bytes(client.image(job, index))
        paths.append(path)
    return paths


def checked(options: RenderOptions, *, tiny: bool) -> dict[str, Any]:
    """The render fields, refused here (one line per problem) before any plan or stack is started."""
    fields = options.request_fields(tiny=tiny)
    RenderRequest.model_validate({**fields, "canvas": _PLACEHOLDER})
    return fields


@app.command()
@errors
@with_render_options
def generate(
    prompt: str,
    options: RenderOptions,
    output: Output = Path("omost.png"),
    url: PlannerUrl = None,
    render_url: RenderUrl = None,
    token: Token = None,
    model: Model = None,
    tiny: Tiny = False,
    llm_url: LlmUrl = None,
    max_new_tokens: MaxNewTokens = None,
) -> None:
    """Plan PROMPT into a canvas, render it and write the image(s)."""
    checked(options, tiny=tiny)
    with services(url, render_url, need_planner=True, need_render=True, model=model, tiny=tiny, llm_url=llm_url) as (
        ends
    ), OmostClient(ends.planner, ends.render, token=token) as client:
        assert ends.planner is not None
        fields = checked(options, tiny=ends.tiny)
        if ends.render:
            # Plan over the stream (progress as it is written), then queue the render ourselves.
            data = plan_with_progress(console, client.stream_plan(prompt, max_new_tokens=max_new_tokens))
            plan = PlanResult.model_validate(data)
            canvas, code, conversation_id = plan.canvas, plan.code, plan.conversation_id
            status_url = client.submit(RenderRequest(canvas=canvas, **fields)).urls.self_
        else:
            # Only the planner is known: it plans and queues in one call, without a token stream.
            with Activity(console, "planning"):
                accepted = client.generate(prompt, render=fields, max_new_tokens=max_new_tokens)
            canvas, code, conversation_id = accepted.canvas, accepted.code, accepted.conversation_id
            status_url = accepted.urls.self_
        show_canvas(console, canvas)
        remember(cache_dir(), Conversation(planner_url=ends.planner).followed_by(
            prompt, code, planner_url=ends.planner, conversation_id=conversation_id))
        job = render_with_progress(console, client.wait, status_url)
        report(console, job, write_images(client, job, output))


@app.command()
@errors
def plan(
    prompt: str,
    url: PlannerUrl = None,
    token: Token = None,
    llm_url: LlmUrl = None,
    as_json: AsJson = False,
    seed: Seed = None,
    max_new_tokens: MaxNewTokens = None,
) -> None:
    """Plan PROMPT into a canvas and print it (Omost code, or JSON with --json)."""
    plan_and_print(prompt, None, url=url, token=token, llm_url=llm_url, as_json=as_json, seed=seed,
                   max_new_tokens=max_new_tokens)


@app.command()
@errors
def edit(
    instruction: str,
    url: PlannerUrl = None,
    token: Token = None,
    llm_url: LlmUrl = None,
    as_json: AsJson = False,
    seed: Seed = None,
    max_new_tokens: MaxNewTokens = None,
) -> None:
    """Change the last planned canvas with a follow-up INSTRUCTION ("make the dog a corgi")."""
    last = recall(cache_dir())
    if last is None:
        raise usage_error("no earlier conversation: run `omost plan` or `omost generate` first")
    plan_and_print(instruction, last, url=url, token=token, llm_url=llm_url, as_json=as_json, seed=seed,
                   max_new_tokens=max_new_tokens)


def plan_and_print(
    prompt: str, last: Conversation | None, *, url: str | None, token: str | None, llm_url: str | None,
    as_json: bool, seed: int | None, max_new_tokens: int | None,
) -> None:
    """``plan`` (``last`` None) or ``edit`` (``last`` continued): stream the plan, remember it, print the canvas."""
    remembered = last.planner_url if last else None
    with services(url, None, need_planner=True, need_render=False, llm_url=llm_url, remembered=remembered) as (
        ends
    ):
        assert ends.planner is not None
        with OmostClient(ends.planner, token=token) as client:
            # An edit's history travels inline, so the edit works against any planner, even a new one.
            events = client.stream_plan(
                prompt, history=last.history if last else None, seed=seed, max_new_tokens=max_new_tokens
            )
            data = plan_with_progress(console, events, label="editing" if last else "planning")
        result = PlanResult.model_validate(data)
        previous = last or Conversation(planner_url=ends.planner)
        remember(cache_dir(), previous.followed_by(
            prompt, result.code, planner_url=ends.planner, conversation_id=result.conversation_id))
    show_corrections(console, result)
    if summary := changes_line(data.get("changes")):
        say(console, summary)
    typer.echo(result.canvas.model_dump_json(indent=2) if as_json else canvas_to_code(result.canvas))


def read_canvas(path: Path) -> Canvas:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return parse_canvas_code(text).canvas  # Omost code form (.py / .md)
    return Canvas.model_validate(data.get("canvas", data) if isinstance(data, dict) else data)


@app.command()
@errors
@with_render_options
def render(
    canvas_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Canvas JSON or Omost code.")],
    options: RenderOptions,
    output: Output = Path("omost.png"),
    render_url: RenderUrl = None,
    token: Token = None,
    model: Model = None,
    tiny: Tiny = False,
) -> None:
    """Render a canvas file (JSON or Omost code) without the planner."""
    canvas = read_canvas(canvas_file)
    checked(options, tiny=tiny)
    with services(None, render_url, need_planner=False, need_render=True, model=model, tiny=tiny) as ends, \
            OmostClient(render_url=ends.render, token=token) as client:
        request = RenderRequest(canvas=canvas, **checked(options, tiny=ends.tiny))
        accepted = client.submit(request)
        job = render_with_progress(console, client.wait, accepted.urls.self_)
        report(console, job, write_images(client, job, output))


@app.command()
@errors
def serve(
    host: Annotated[str, typer.Option(help="Address the APIs listen on.")] = "127.0.0.1",
    planner_port: Annotated[int, typer.Option(help="Planner port (the playground is served there).")] = 8000,
    render_port: Annotated[int, typer.Option(help="Render API port.")] = 8100,
    redis_url: Annotated[
        str | None, typer.Option(envvar="OMOST_REDIS_URL", help="Redis to use; none: a private redis-server whose "
                                 "data stays in the cache folder.")
    ] = None,
    llm_url: LlmUrl = None,
    llm_kind: Annotated[str | None, typer.Option(help="llamacpp, vllm or none (how to send the grammar).")] = None,
    llm: Annotated[
        LocalLlm, typer.Option(help="The LLM this stack starts when no --llm-url is given: the planner's embedded "
                               "llama.cpp, or a vLLM server as a child process (see --llm-model).")
    ] = LocalLlm.embedded,
    llm_model: Annotated[
        str | None, typer.Option(help="With --llm vllm: the model vLLM serves, an HF folder or hub id.")
    ] = None,
    model: Model = None,
    tiny: Tiny = False,
    workers: Annotated[int | None, typer.Option(help="Render workers; default one per GPU, or one on CPU.")] = None,
) -> None:
    """Run the whole stack until Ctrl-C: Redis, planner, render API and workers (and vLLM with --llm vllm)."""
    chosen = TINY_MODEL if tiny else model or os.environ.get("OMOST_RENDER_MODEL")
    if not chosen:
        raise usage_error(NO_MODEL)
    vllm = local_vllm(llm, llm_model, llm_url)
    if tiny:
        say(console, "[yellow]--tiny: random weights, offline. The images are noise; the pipeline is real.[/]")
    config = StackConfig(
        host=host, planner_port=planner_port, render_port=render_port, redis_url=redis_url, llm_url=llm_url,
        llm_kind=llm_kind, vllm=vllm, model=chosen, workers=workers,
        redis_data=cache_dir() / "redis" / f"serve-{planner_port}",
    )
    stack = LocalStack(config)
    cache, pid = cache_dir(), os.getpid()
    try:
        with Activity(console, "starting") as activity:
            stack.start(progress=activity.update)
        write_state(cache, ServeState(pid, stack.planner_url, stack.render_url, stack.redis_url, chosen))
        say(console, f"planner    {stack.planner_url}   (API docs: {stack.planner_url}/docs)")
        say(console, f"render API {stack.render_url}   (API docs: {stack.render_url}/docs)")
        say(console, f"redis      {stack.redis_url}")
        if vllm is not None:
            say(console, f"vLLM       {vllm.base_url}   (model {vllm.served_model_name})")
        say(console, f"[bold]playground {stack.planner_url}/[/]")
        say(console, f"[dim]logs in {stack.log_dir}; other omost commands use this stack; Ctrl-C stops everything[/]")
        while all(child.process.poll() is None for child in stack.children):
            time.sleep(0.5)
        dead = [c.name for c in stack.children if c.process.poll() is not None]
        say(console, f"[red]{', '.join(dead)} stopped; shutting down (logs in {stack.log_dir})[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        say(console, "[dim]stopping...[/]")
    finally:
        remove_state(cache, pid)
        stack.stop()


app.command("mcp")(mcp_command)
