"""``omost`` commands. Each talks to running services through ``shared.client``; without a URL it
starts a temporary local stack (``shared.cli.stack``) for the duration of the command."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from shared.canvas import Canvas
from shared.cli.stack import LocalStack, StackConfig, cache_dir, free_port
from shared.client import OmostAPIError, OmostClient, RenderFailed
from shared.contract import RENDER_DEFAULTS
from shared.jobs import DEFAULT_SAMPLER, RenderJob, RenderRequest
from shared.omost_code import canvas_to_code, parse_canvas_code
from shared.plans import ChatTurn

app = typer.Typer(help="LLM-planned, region-controlled image generation (Omost, as services).", no_args_is_help=True)
console = Console(stderr=True)

PlannerUrl = Annotated[
    str | None, typer.Option("--url", envvar="OMOST_PLANNER_URL", help="Planner of a running stack; none: start one.")
]
RenderUrl = Annotated[
    str | None, typer.Option("--render-url", envvar="OMOST_RENDER_URL", help="Render API of a running stack.")
]
Token = Annotated[str | None, typer.Option("--token", envvar="OMOST_API_TOKEN", help="Bearer token of the APIs.")]
Model = Annotated[
    str | None, typer.Option("--model", help="SDXL checkpoint: hub id, diffusers folder or .safetensors.")
]
Tiny = Annotated[
    bool, typer.Option("--tiny", help="Offline random-weight tiny SDXL: a smoke run that makes noise, not pictures.")
]
LlmUrl = Annotated[
    str | None, typer.Option("--llm-url", help="OpenAI-compatible LLM server (e.g. vLLM); none: embedded SmolLM2.")
]
Width = Annotated[int, typer.Option(help="Image width, a multiple of 8.")]
Height = Annotated[int, typer.Option(help="Image height, a multiple of 8.")]
Steps = Annotated[int, typer.Option(help="Sampling steps.")]
Seed = Annotated[int | None, typer.Option(help="Seed; image i uses seed + i. None: random.")]
Images = Annotated[int, typer.Option("--num-images", "-n", help="Images to render.")]
Guidance = Annotated[float, typer.Option(help="Classifier-free guidance scale.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="PNG path; more images get -1, -2, ... suffixes.")]

LAST_CONVERSATION = "last_conversation.json"


def friendly_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Show what went wrong as one line a user can act on, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except httpx.HTTPError as exc:
            console.print(f"[red]error:[/] cannot reach {exc.request.url}: {exc}")
            raise typer.Exit(1) from None
        except (OmostAPIError, RenderFailed, TimeoutError, RuntimeError, ValueError, OSError) as exc:
            console.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None

    return wrapper


def tiny_model_path() -> str:
    from render_service.engine.tiny import build_tiny_model  # torch only when asked for

    console.print("[yellow]--tiny: random weights, offline. The images are noise; the pipeline is real.[/]")
    return str(build_tiny_model(cache_dir() / "tiny-sdxl"))


def stack_config(*, model: str | None, tiny: bool, llm_url: str | None, planner: bool, render: bool) -> StackConfig:
    return StackConfig(
        planner_port=free_port(),
        render_port=free_port(),
        model=tiny_model_path() if tiny and render else model,
        llm_url=llm_url,
        planner=planner,
        render=render,
    )


@contextlib.contextmanager
def services(
    planner_url: str | None, render_url: str | None, *, need_planner: bool, need_render: bool,
    model: str | None = None, tiny: bool = False, llm_url: str | None = None,
) -> Iterator[tuple[str | None, str | None]]:
    """The given URLs, or those of a temporary local stack started for this command."""
    missing_planner = need_planner and not planner_url
    missing_render = need_render and not render_url and not planner_url
    if not (missing_planner or missing_render):
        yield planner_url, render_url
        return
    if need_render and not (model or tiny):
        raise typer.BadParameter("without --url, rendering needs --model (an SDXL checkpoint) or --tiny")
    config = stack_config(model=model, tiny=tiny, llm_url=llm_url, planner=need_planner, render=need_render)
    console.print("[dim]starting a temporary local stack (use `omost serve` to keep one running)...[/]")
    started = time.perf_counter()
    with LocalStack(config) as stack:
        console.print(f"[dim]stack ready in {time.perf_counter() - started:.1f} s[/]")
        yield (stack.planner_url if need_planner else None), (stack.render_url if need_render else None)


def show_canvas(canvas: Canvas) -> None:
    table = Table(title=canvas.global_description.description, title_justify="left")
    for column in ("#", "location", "offset", "area", "distance", "colour", "description"):
        table.add_column(column)
    for i, r in enumerate(canvas.local_descriptions):
        row = (str(i), r.location, r.offset, r.area, f"{r.distance_to_viewer:g}", r.HTML_web_color_name, r.description)
        table.add_row(*row)
    console.print(table)


def remember(planner_url: str, prompt: str, code: str, conversation_id: str | None, history: list[ChatTurn]) -> None:
    turns = [*history, ChatTurn(role="user", content=prompt), ChatTurn(role="assistant", content=code)]
    state = {"planner_url": planner_url, "conversation_id": conversation_id, "history": [t.model_dump() for t in turns]}
    (cache_dir() / LAST_CONVERSATION).write_text(json.dumps(state))


def write_images(client: OmostClient, job: RenderJob, output: Path) -> list[Path]:
    output.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(len(job.urls.images)):
        path = output if index == 0 else output.with_name(f"{output.stem}-{index}{output.suffix}")
        path.write_bytes(client.image(job, index))
        paths.append(path)
    return paths


def wait_with_progress(client: OmostClient, status_url: str) -> RenderJob:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("queued", total=None)

        def update(job: RenderJob) -> None:
            if job.progress:
                progress.update(task, description=job.status, completed=job.progress.step, total=job.progress.total)
            else:
                progress.update(task, description=job.status)

        return client.wait(status_url, on_progress=update)


def report(job: RenderJob, paths: list[Path]) -> None:
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in job.timings.items())
    for path, seed in zip(paths, job.seeds or [None] * len(paths), strict=False):
        console.print(f"wrote [bold]{path}[/] (seed {seed})")
    console.print(f"[dim]render {job.id} on {job.device or '?'} with {job.model or '?'}: {timings}[/]")


def render_options(width: int, height: int, steps: int, seed: int | None, num_images: int, guidance: float) -> dict:
    return {
        "width": width, "height": height, "steps": steps, "seed": seed, "num_images": num_images,
        "guidance_scale": guidance, "sampler": DEFAULT_SAMPLER,
    }


@app.command()
@friendly_errors
def generate(
    prompt: str,
    output: Output = Path("omost.png"),
    url: PlannerUrl = None,
    token: Token = None,
    model: Model = None,
    tiny: Tiny = False,
    llm_url: LlmUrl = None,
    width: Width = RENDER_DEFAULTS["width"],
    height: Height = RENDER_DEFAULTS["height"],
    steps: Steps = RENDER_DEFAULTS["steps"],
    seed: Seed = None,
    num_images: Images = 1,
    guidance: Guidance = RENDER_DEFAULTS["cfg"],
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on the plan's length in tokens.")] = None,
) -> None:
    """Plan PROMPT into a canvas, render it and write the image(s)."""
    with services(url, None, need_planner=True, need_render=True, model=model, tiny=tiny, llm_url=llm_url) as (
        planner_url, _,
    ), OmostClient(planner_url, token=token) as client:
        started = time.perf_counter()
        accepted = client.generate(
            prompt,
            render=render_options(width, height, steps, seed, num_images, guidance),
            max_new_tokens=max_new_tokens,
        )
        console.print(f"[dim]planned in {time.perf_counter() - started:.1f} s[/]")
        show_canvas(accepted.canvas)
        assert planner_url is not None
        remember(planner_url, prompt, accepted.code, accepted.conversation_id, [])
        job = wait_with_progress(client, accepted.urls.self_)
        report(job, write_images(client, job, output))


@app.command()
@friendly_errors
def plan(
    prompt: str,
    url: PlannerUrl = None,
    token: Token = None,
    llm_url: LlmUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the canvas as JSON instead of Omost code.")] = False,
    seed: Seed = None,
    max_new_tokens: Annotated[int | None, typer.Option(help="Cap on the plan's length in tokens.")] = None,
) -> None:
    """Plan PROMPT into a canvas and print it (Omost code, or JSON with --json)."""
    with services(url, None, need_planner=True, need_render=False, llm_url=llm_url) as (planner_url, _):
        assert planner_url is not None
        with OmostClient(planner_url, token=token) as client:
            result = client.plan(prompt, seed=seed, max_new_tokens=max_new_tokens)
        remember(planner_url, prompt, result.code, result.conversation_id, [])
    for correction in result.corrections:
        console.print(f"[yellow]corrected line {correction.line}: {correction.field} "
                      f"{correction.original!r} -> {correction.corrected!r}[/]")
    typer.echo(result.canvas.model_dump_json(indent=2) if as_json else canvas_to_code(result.canvas))


@app.command()
@friendly_errors
def edit(
    instruction: str,
    url: PlannerUrl = None,
    token: Token = None,
    llm_url: LlmUrl = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the canvas as JSON instead of Omost code.")] = False,
    seed: Seed = None,
) -> None:
    """Change the last planned canvas with a follow-up INSTRUCTION ("make the dog a corgi")."""
    state_path = cache_dir() / LAST_CONVERSATION
    if not state_path.exists():
        raise typer.BadParameter("no earlier conversation: run `omost plan` or `omost generate` first")
    state: dict[str, Any] = json.loads(state_path.read_text())
    history = [ChatTurn.model_validate(t) for t in state["history"]]
    with services(url, None, need_planner=True, need_render=False, llm_url=llm_url) as (planner_url, _):
        assert planner_url is not None
        with OmostClient(planner_url, token=token) as client:
            # The history travels inline, so the edit works against any planner, even a new one.
            result = client.plan(instruction, history=history, seed=seed)
        remember(planner_url, instruction, result.code, result.conversation_id, history)
    typer.echo(result.canvas.model_dump_json(indent=2) if as_json else canvas_to_code(result.canvas))


def read_canvas(path: Path) -> Canvas:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return parse_canvas_code(text).canvas  # Omost code form (.py / .md)
    return Canvas.model_validate(data.get("canvas", data) if isinstance(data, dict) else data)


@app.command()
@friendly_errors
def render(
    canvas_file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Canvas JSON or Omost code.")],
    output: Output = Path("omost.png"),
    render_url: RenderUrl = None,
    token: Token = None,
    model: Model = None,
    tiny: Tiny = False,
    width: Width = RENDER_DEFAULTS["width"],
    height: Height = RENDER_DEFAULTS["height"],
    steps: Steps = RENDER_DEFAULTS["steps"],
    seed: Seed = None,
    num_images: Images = 1,
    guidance: Guidance = RENDER_DEFAULTS["cfg"],
) -> None:
    """Render a canvas file (JSON or Omost code) without the planner."""
    request = RenderRequest(canvas=read_canvas(canvas_file), **render_options(width, height, steps, seed, num_images,
                                                                               guidance))
    with services(None, render_url, need_planner=False, need_render=True, model=model, tiny=tiny) as (_, base), \
            OmostClient(render_url=base, token=token) as client:
        accepted = client.submit(request)
        job = wait_with_progress(client, accepted.urls.self_)
        report(job, write_images(client, job, output))


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address the APIs listen on.")] = "127.0.0.1",
    planner_port: Annotated[int, typer.Option(help="Planner port (the playground is served there).")] = 8000,
    render_port: Annotated[int, typer.Option(help="Render API port.")] = 8100,
    redis_url: Annotated[
        str | None, typer.Option(envvar="OMOST_REDIS_URL", help="Redis; none: local one, or a private child.")
    ] = None,
    llm_url: LlmUrl = None,
    llm_kind: Annotated[str | None, typer.Option(help="llamacpp, vllm or none (how to send the grammar).")] = None,
    model: Model = None,
    tiny: Tiny = False,
    workers: Annotated[int | None, typer.Option(help="Render workers; default one per GPU, or one on CPU.")] = None,
) -> None:
    """Run the whole stack until Ctrl-C: Redis, planner, render API and workers."""
    if not (model or tiny or os.environ.get("OMOST_RENDER_MODEL")):
        model = RENDER_DEFAULTS["base_model"].split(" ")[0]
        console.print(f"[dim]no --model: using {model} (downloaded from the hub on first use)[/]")
    config = StackConfig(
        host=host, planner_port=planner_port, render_port=render_port, redis_url=redis_url, llm_url=llm_url,
        llm_kind=llm_kind, model=tiny_model_path() if tiny else model, workers=workers,
    )
    stack = LocalStack(config)
    console.print("[dim]starting...[/]")
    try:
        stack.start()
        console.print(f"planner    {stack.planner_url}   (API docs: {stack.planner_url}/docs)")
        console.print(f"render API {stack.render_url}   (API docs: {stack.render_url}/docs)")
        console.print(f"redis      {stack.redis_url}")
        console.print(f"[bold]playground {stack.planner_url}/[/]")
        console.print(f"[dim]logs in {stack.log_dir}; Ctrl-C stops everything[/]")
        while all(child.process.poll() is None for child in stack.children):
            time.sleep(0.5)
        dead = [c.name for c in stack.children if c.process.poll() is not None]
        console.print(f"[red]{', '.join(dead)} stopped; shutting down (logs in {stack.log_dir})[/]")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("[dim]stopping...[/]")
    finally:
        stack.stop()
