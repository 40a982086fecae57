"""The command-line options the commands share, and :class:`RenderOptions`: the sampling options
declared once and added to every command that renders by :func:`with_render_options`."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.contract import RENDER_DEFAULTS
from shared.jobs import SamplingParams

PlannerUrl = Annotated[
    str | None,
    typer.Option("--url", envvar="OMOST_PLANNER_URL", help="Planner of a running stack; none: `omost serve`'s, or a "
                 "temporary one."),
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
Seed = Annotated[int | None, typer.Option(help="Seed; image i uses seed + i. None: random.")]
PlanSeed = Annotated[int | None, typer.Option("--seed", help="The LLM's sampling seed: the same seed, the same plan. "
                                              "None: random.")]
Output = Annotated[Path, typer.Option("--output", "-o", help="PNG path; more images get -1, -2, ... suffixes.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the canvas as JSON instead of Omost code.")]
MaxNewTokens = Annotated[int | None, typer.Option(help="Cap on the plan's length in tokens.")]

TINY_SIDE = 256
"""Image side with the tiny model: its pictures are noise anyway, and 2 CPU cores render 256² in seconds."""


def tiny_stack_env(tiny: bool) -> dict[str, str]:
    """A tiny-model stack's services default small too: the playground's render form and the OpenAI
    Images API's size "auto". A value the user set in the environment still wins."""
    if not tiny:
        return {}
    names = ("OMOST_PLANNER_PLAYGROUND_DEFAULT_SIZE", "OMOST_PLANNER_IMAGES_DEFAULT_SIZE")
    return {name: f"{TINY_SIDE}x{TINY_SIDE}" for name in names if name not in os.environ}


@dataclass(frozen=True)
class RenderOptions:
    """How to sample; sizes left unset are chosen by :meth:`sampling` (small for the tiny model)."""

    width: int | None = None
    height: int | None = None
    steps: int | None = None
    seed: int | None = None
    num_images: int = 1
    guidance: float | None = None
    model_name: str | None = None

    def sampling(self, *, tiny: bool) -> SamplingParams:
        """The sampling parameters of the render, checked by the contract (a ``ValidationError`` names
        each bad option), so a bad option is refused before any plan or stack is started. Steps, guidance
        and the model left out stay unset, so the served model's own defaults apply (Flux's differ)."""
        side_w, side_h = (TINY_SIDE, TINY_SIDE) if tiny else (RENDER_DEFAULTS["width"], RENDER_DEFAULTS["height"])
        optional = {"steps": self.steps, "guidance_scale": self.guidance, "model": self.model_name}
        return SamplingParams(
            width=self.width or side_w, height=self.height or side_h, seed=self.seed, num_images=self.num_images,
            **{name: value for name, value in optional.items() if value is not None},
        )


_RENDER_PARAMETERS = [
    inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
    for name, default, annotation in (
        ("width", None, Annotated[int | None, typer.Option(
            help=f"Image width, a multiple of 8 (default {RENDER_DEFAULTS['width']}; {TINY_SIDE} with --tiny).")]),
        ("height", None, Annotated[int | None, typer.Option(
            help=f"Image height, a multiple of 8 (default {RENDER_DEFAULTS['height']}; {TINY_SIDE} with --tiny).")]),
        ("steps", None, Annotated[int | None, typer.Option(
            help=f"Sampling steps (default: the model's; {RENDER_DEFAULTS['steps']} on SDXL, 4 on Flux schnell).")]),
        ("seed", None, Seed),
        ("num_images", 1, Annotated[int, typer.Option("--num-images", "-n", help="Images to render.")]),
        ("guidance", None, Annotated[float | None, typer.Option(
            help=f"Guidance scale (default: the model's; {RENDER_DEFAULTS['cfg']} on SDXL).")]),
        ("model_name", None, Annotated[str | None, typer.Option(
            "--model-name", help="The served model to render with, as GET /v1/models names it (default: the "
            "deployment's default model).")]),
    )
]


def with_render_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give ``command`` the render options on the command line, and one ``options: RenderOptions``.

    Typer reads a command's options from its signature, so the wrapper's signature lists them in
    place of ``options``; the wrapper folds them back into the dataclass.
    """
    signature = inspect.signature(command, eval_str=True)
    kept = [p for p in signature.parameters.values() if p.name != "options"]

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        values = {p.name: kwargs.pop(p.name) for p in _RENDER_PARAMETERS}
        command(*args, options=RenderOptions(**values), **kwargs)

    wrapper.__signature__ = signature.replace(parameters=[*kept, *_RENDER_PARAMETERS])  # type: ignore[attr-defined]
    return wrapper
