"""``omost`` commands. Each talks to services through ``shared.client``: those named by ``--url``,
else the stack of a running ``omost serve``, else a temporary local stack (``shared.cli.stack``)
started for the duration of the command."""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console

from shared.cli.canvas_file import read_canvas
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
from shared.cli.errors import error_line, friendly_errors
from shared.cli.mcp import mcp_command
from shared.cli.memory import Conversation, recall, remember
from shared.cli.options import (
    AsJson,
    LlmUrl,
    MaxNewTokens,
    Model,
    Output,
    PlannerUrl,
    PlanSeed,
    RenderOptions,
    RenderUrl,
    Tiny,
    Token,
    tiny_stack_env,
    with_render_options,
)
from shared.cli.stack import LocalStack, StackConfig, cache_dir, cuda_device_count, free_port
from shared.cli.state import ServeRunning, ServeState, remove_state, running_stack, serve_lock, write_state
from shared.cli.vllm import EAGER, VllmServer, extra_args_from_env
from shared.client import OmostAPIError, OmostClient
from shared.jobs import RenderAccepted, RenderJob, RenderRequest
from shared.omost_code import canvas_to_code
from shared.plans import ChatTurn, GenerationAccepted, PlanRequest

app = typer.Typer(help="LLM-planned, region-controlled image generation (Omost, as services).", no_args_is_help=True)
console = Console(stderr=True)
errors = friendly_errors(console)

def _version(value: bool) -> None:
    if value:
        try:
            typer.echo(f"omost {metadata.version('omost-service')}")
        except metadata.PackageNotFoundError:  # run from a checkout that was never installed
            typer.echo("omost (not installed: no version)")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """LLM-planned, region-controlled image generation (Omost, as services)."""


TINY_MODEL = "tiny"
"""The model name the render worker builds itself: random weights, offline (render_service's loader)."""
NO_MODEL = (
    "say which SDXL model to render with: --model <hub id, diffusers folder or .safetensors>, "
    "--tiny (offline random-weight smoke model), or OMOST_RENDER_MODEL"
)


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
        planner=need_planner, render=need_render, extra_env=tiny_stack_env(tiny),
    )
    if tiny and need_render:
        say(console, "[yellow]--tiny: random weights, offline. The images are noise; the pipeline is real.[/]")
    stack = LocalStack(config)
    started = time.perf_counter()
    try:
        try:
            with Activity(console, "starting a temporary local stack (`omost serve` keeps one running)"):
                stack.start()
        except KeyboardInterrupt:
            say(console, "interrupted: the temporary stack was stopped while it started")
            raise
        say(console, f"[dim]stack ready in {time.perf_counter() - started:.1f} s[/]")
        yield Endpoints(stack.planner_url if need_planner else None, stack.render_url if need_render else None, tiny)
    finally:
        stop_stack(stack, "the temporary stack")


def stop_stack(stack: LocalStack, what: str) -> None:
    """Stop ``stack``, saying what is being stopped: services finish or requeue their job first."""
    # In the order they stop: the services (workers finish or requeue their job), then Redis.
    names = sorted((child.name for child in stack.children), key=lambda name: name == "redis")
    if not names:  # never started, or already stopped by a failed start
        return
    say(console, f"[dim]stopping {what}: {', '.join(names)}[/]")
    with Activity(console, f"stopping {what}"):
        stack.stop()


@contextlib.contextmanager
def cancel_on_interrupt(client: OmostClient, job_id: str) -> Iterator[None]:
    """Ctrl-C (or SIGTERM, SIGHUP: ``shared.cli.main`` turns them into KeyboardInterrupt) while
    waiting for ``job_id`` cancels the job, so the worker stops too, and says so in one line."""
    try:
        yield
    except KeyboardInterrupt:
        try:
            job = client.cancel(job_id)
            if job.status == "running":  # the worker stops at its next step
                say(console, f"interrupted: canceled render {job_id} (it was running, at step "
                             f"{job.progress.step if job.progress else 0}; the worker stops at the next)")
            else:
                say(console, f"interrupted: canceled render {job_id} (now {job.status})")
        except (httpx.HTTPError, OmostAPIError) as exc:
            say(console, f"[red]interrupted: render {job_id} could not be canceled: {error_line(exc)}[/]")
        raise


@contextlib.contextmanager
def plan_stops_on_interrupt() -> Iterator[None]:
    """Ctrl-C while planning: leaving the stream closes the connection, and the planner cancels a
    plan whose client went away (its LLM request too) before it queues anything."""
    try:
        yield
    except KeyboardInterrupt:
        say(console, "interrupted: the plan in progress was canceled (nothing was queued)")
        raise


def submitted(job_id: str, status_url: str) -> None:
    say(console, f"queued render {job_id} ({status_url}); Ctrl-C cancels it")


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
    eager = () if cuda_device_count() else (EAGER,)
    return VllmServer(model, free_port(), extra_args=(*eager, *extra_args_from_env()))


def write_images(client: OmostClient, job: RenderJob, output: Path) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(job.urls.images)):
        path = output if index == 0 else output.with_name(f"{output.stem}-{index}{output.suffix}")
        path.write_bytes(client.image(job, index))
        paths.append(path)
    return paths


def checked_plan(
    prompt: str, *, history: list[ChatTurn] | None = None, seed: int | None = None, max_new_tokens: int | None = None
) -> None:
    """The plan request as the planner will check it (the shared contract's model), refused here,
    before any stack is started: an empty or 5,000-character prompt is one line in a fraction of a second."""
    PlanRequest(prompt=prompt, history=history or [], seed=seed, max_new_tokens=max_new_tokens)


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
    checked_plan(prompt, max_new_tokens=max_new_tokens)
    options.sampling(tiny=tiny)  # refused here, before a plan or a stack is started
    with services(url, render_url, need_planner=True, need_render=True, model=model, tiny=tiny, llm_url=llm_url) as (
        ends
    ), OmostClient(ends.planner, ends.render, token=token) as client:
        assert ends.planner is not None
        sampling = options.sampling(tiny=ends.tiny)
        queued: RenderAccepted | GenerationAccepted
        if ends.render:
            # Plan over the stream (progress as it is written), then queue the render ourselves.
            with plan_stops_on_interrupt():
                plan = plan_with_progress(console, client.stream_plan(prompt, max_new_tokens=max_new_tokens))
            canvas, code, conversation_id = plan.canvas, plan.code, plan.conversation_id
            queued = client.submit(RenderRequest.of(canvas, sampling))
        else:
            # Only the planner is known: it plans and queues in one call, without a token stream.
            with plan_stops_on_interrupt(), Activity(console, "planning"):
                queued = client.generate(prompt, render=sampling, max_new_tokens=max_new_tokens)
            canvas, code, conversation_id = queued.canvas, queued.code, queued.conversation_id
        submitted(queued.id, queued.urls.self_)
        with cancel_on_interrupt(client, queued.id):
            show_canvas(console, canvas)
            remember(cache_dir(), Conversation(planner_url=ends.planner).followed_by(
                prompt, code, planner_url=ends.planner, conversation_id=conversation_id))
            job = render_with_progress(console, client.wait, queued.urls.self_)
        report(console, job, write_images(client, job, output))


@app.command()
@errors
def plan(
    prompt: str,
    url: PlannerUrl = None,
    token: Token = None,
    llm_url: LlmUrl = None,
    as_json: AsJson = False,
    seed: PlanSeed = None,
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
    seed: PlanSeed = None,
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
    checked_plan(prompt, history=last.history if last else None, seed=seed, max_new_tokens=max_new_tokens)
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
            with plan_stops_on_interrupt():
                result = plan_with_progress(console, events, label="editing" if last else "planning")
        previous = last or Conversation(planner_url=ends.planner)
        remember(cache_dir(), previous.followed_by(
            prompt, result.code, planner_url=ends.planner, conversation_id=result.conversation_id))
    show_corrections(console, result)
    if summary := changes_line(result.changes):
        say(console, summary)
    typer.echo(result.canvas.model_dump_json(indent=2) if as_json else canvas_to_code(result.canvas))


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
    options.sampling(tiny=tiny)  # refused here, before a stack is started
    with services(None, render_url, need_planner=False, need_render=True, model=model, tiny=tiny) as ends, \
            OmostClient(render_url=ends.render, token=token) as client:
        request = RenderRequest.of(canvas, options.sampling(tiny=ends.tiny))
        accepted = client.submit(request)
        submitted(accepted.id, accepted.urls.self_)
        with cancel_on_interrupt(client, accepted.id):
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
    cache, pid = cache_dir(), os.getpid()
    lock = contextlib.ExitStack()  # held until this serve ends: one per cache folder
    try:
        lock.enter_context(serve_lock(cache))
    except ServeRunning as exc:
        raise usage_error(str(exc)) from None
    vllm = local_vllm(llm, llm_model, llm_url)
    if tiny:
        say(console, "[yellow]--tiny: random weights, offline. The images are noise; the pipeline is real.[/]")
    config = StackConfig(
        host=host, planner_port=planner_port, render_port=render_port, redis_url=redis_url, llm_url=llm_url,
        llm_kind=llm_kind, vllm=vllm, model=chosen, workers=workers,
        redis_data=cache_dir() / "redis" / f"serve-{planner_port}", extra_env=tiny_stack_env(chosen == TINY_MODEL),
    )
    stack = LocalStack(config)
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
        pass  # the usual way to stop serve: exit status 0
    finally:
        remove_state(cache, pid)
        stop_stack(stack, "the stack")
        lock.close()


app.command("mcp")(mcp_command)
