"""The Flux.1 engine: Omost canvases on a ``FluxPipeline`` with masked joint attention.

The same face as the SDXL :class:`~render_service.engine.engine.RenderEngine` towards the worker
(``render``, ``render_batch``, ``warm_up``, ``model_name``, ``device``, ``attention``), so a worker
serves either family. Unlike SDXL's, this loop is diffusers' own ``FluxPipeline.__call__`` (its
resolution-dependent shift, guidance embedding and latent packing stay stock): our parts are the
prompt encoding (:func:`~render_service.engine.flux_regional.encode_layout`), the attention
processors, and the per-step callback that counts progress and asks for a cancel; forward
pre-hooks on every transformer block ask too, so a cancel lands within one block.

[dev] and [schnell] are told apart by the transformer (``guidance_embeds``): [dev] embeds the
request's guidance scale and defaults to 28 steps at 3.5 with 512 T5 tokens; [schnell] to 4
steps, no guidance, 256 tokens. Jobs of a batch are rendered one after another.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from render_service.engine.backends import JointAttentionBackend, check_attention, default_attention, joint_backend
from render_service.engine.batching import OnStep, RenderTask, ShouldCancel
from render_service.engine.engine import WARM_UP_CANVAS, _Progress, _Timer
from render_service.engine.families import model_family
from render_service.engine.flux_regional import (
    FluxRegionalInputs,
    FluxRegionalOptions,
    encode_layout,
    install_flux_regional_processors,
    token_coverage,
)
from render_service.engine.loading import resolve_device, resolve_dtype
from render_service.engine.types import RenderCanceled, RenderResult
from shared.jobs import MAX_SEED, FluxOptions, RenderRequest
from shared.layout import layout_canvas
from shared.models import ModelInfo

__all__ = ["FLUX_SAMPLERS", "VARIANT_DEFAULTS", "FluxEngine", "regional_options"]

FLUX_SAMPLERS = ("euler",)
"""Flux's one sampler: Euler on the flow-matching schedule (``FlowMatchEulerDiscreteScheduler``)."""
VARIANT_DEFAULTS: dict[str, dict[str, Any]] = {
    # black-forest-labs' model cards: [dev] 28-50 steps at guidance 3.5, [schnell] 4 steps, guidance unused.
    "dev": {"steps": 28, "guidance_scale": 3.5, "max_sequence_length": 512},
    "schnell": {"steps": 4, "guidance_scale": 0.0, "max_sequence_length": 256},
}
REGIONAL_FRACTION = 0.4
"""Default share of the first steps that get the region mask (Regional-Prompting-FLUX: 10 of 24)."""


def regional_options(options: FluxOptions | None, steps: int) -> FluxRegionalOptions:
    """A request's ``flux`` knobs as the processors take them; ``regional_steps`` None is the first 40 %."""
    options = options or FluxOptions()
    regional_steps = options.regional_steps
    if regional_steps is None:
        regional_steps = max(1, math.ceil(steps * REGIONAL_FRACTION))
    return FluxRegionalOptions(
        regional_steps=regional_steps,
        double_interval=options.double_interval,
        single_interval=options.single_interval,
        base_ratio=options.base_ratio,
        area_weighting=options.area_weighting,
    )


class FluxEngine:
    """One loaded Flux.1 model that renders Omost canvases, one job at a time (a lock)."""

    _loaded: ClassVar[dict[tuple[Any, ...], FluxEngine]] = {}
    _load_lock: ClassVar[threading.Lock] = threading.Lock()
    family = model_family("flux")

    def __init__(self, pipeline: Any, *, model_name: str, device: str, dtype: torch.dtype) -> None:
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.transformer = pipeline.transformer
        install_flux_regional_processors(self.transformer)
        self.variant = "dev" if self.transformer.config.guidance_embeds else "schnell"
        self.defaults = VARIANT_DEFAULTS[self.variant]
        self.compiled = False
        self.attention = default_attention(self.family.attention_layout)
        """The attention backend of the masked joint attention; see :meth:`set_attention`."""
        self._attention_backend = self._check_attention(self.attention)
        self._render_lock = threading.Lock()
        self._progress: _Progress | None = None
        blocks = [*self.transformer.transformer_blocks, *self.transformer.single_transformer_blocks]
        for block in blocks:
            block.register_forward_pre_hook(self._check_cancel_hook)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cpu_offload: bool = False,
        config: str | None = None,
        compile: bool = False,
        attention: str | None = None,
    ) -> FluxEngine:
        """Load a Flux.1 ``model`` (diffusers folder, hub id, single transformer file with ``config``,
        ``tiny-flux``, ``tiny-flux-schnell``) once per process. ``dtype`` auto is bf16 on accelerators
        (Flux overflows in fp16) and fp32 on CPU. ``attention`` is :meth:`set_attention`'s (None:
        ``packed``); one that cannot serve Flux's joint attention here is an
        :class:`~render_service.engine.backends.AttentionConfigError` before anything loads."""
        attention = attention or default_attention(cls.family.attention_layout)
        resolved_device = resolve_device(device)
        torch_dtype = (
            torch.bfloat16 if dtype == "auto" and resolved_device != "cpu" else resolve_dtype(dtype, resolved_device)
        )
        check_attention(
            attention, device=resolved_device, dtype=torch_dtype, compiled=compile,
            layout=cls.family.attention_layout, contiguous_condition_tokens=cls.family.contiguous_condition_tokens,
        )  # fmt: skip
        key = (str(model), resolved_device, str(torch_dtype), cpu_offload, config, compile, attention)
        with cls._load_lock:
            engine = cls._loaded.get(key)
            if engine is None:
                pipeline = cls.family.load_pipeline(str(model), torch_dtype, config)
                if cpu_offload and resolved_device != "cpu":
                    pipeline.enable_model_cpu_offload(device=resolved_device)
                else:
                    pipeline.to(resolved_device)
                engine = cls(pipeline, model_name=str(model), device=resolved_device, dtype=torch_dtype)
                if compile:
                    engine.compile_transformer()
                engine.set_attention(attention)
                cls._loaded[key] = engine
            return engine

    def compile_transformer(self, **kwargs: Any) -> None:
        """``torch.compile`` the transformer in place (graph breaks allowed: the processors read the
        job's step in Python). Not measured on a GPU yet (``bench/flux_bench.py --compile``)."""
        # Each block's processor is its own object (kind, index) and double and single blocks differ in their
        # inputs: dynamo compiles one graph per block, more than its default cache of 8 allows.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
        self.transformer.compile(**kwargs)
        self.compiled = True

    def set_attention(self, name: str) -> None:
        """Which registered backend computes the masked joint attention, from the next job on:
        ``packed`` (the default: every allowed pair once, FlashAttention's varlen kernel on CUDA in
        bf16/fp16) or ``sdpa`` (the dense ``(S, S)`` mask). Both exact (the float64 reference within
        rounding). Raises :class:`~render_service.engine.backends.AttentionConfigError` if it cannot
        serve here (``flex`` serves SDXL only) and keeps the current one."""
        self._attention_backend = self._check_attention(name)
        self.attention = name

    def _check_attention(self, name: str) -> JointAttentionBackend[Any]:
        check_attention(
            name, device=self.device, dtype=self.dtype, compiled=self.compiled, layout=self.family.attention_layout,
            contiguous_condition_tokens=self.family.contiguous_condition_tokens,
        )  # fmt: skip
        return joint_backend(name)

    def model_info(self, name: str) -> ModelInfo:
        """What this engine serves, as the worker registers it under ``name`` (``GET /v1/models``)."""
        return ModelInfo(
            name=name,
            family="flux",
            variant=self.variant,
            source=self.model_name,
            default_steps=self.defaults["steps"],
            default_guidance_scale=self.defaults["guidance_scale"],
            default_sampler=FLUX_SAMPLERS[0],
            samplers=list(FLUX_SAMPLERS),
            size_multiple=16,
            options=["flux"],
        )

    # ------------------------------------------------------------------ rendering

    def warm_up(
        self, sizes: Sequence[tuple[int, int]] = ((1024, 1024),), *, num_images: int = 1, steps: int = 2
    ) -> float:
        """One ``steps``-step render per (width, height) before the first job; the seconds it took."""
        started = time.perf_counter()
        for width, height in sizes:
            request = RenderRequest.model_validate(
                {"canvas": WARM_UP_CANVAS, "width": _round16(width), "height": _round16(height), "steps": steps,
                 "seed": 0, "num_images": num_images, "sampler": "euler"}
            )  # fmt: skip
            self.render(request)
        return time.perf_counter() - started

    def render(
        self, request: RenderRequest, *, on_step: OnStep | None = None, should_cancel: ShouldCancel | None = None
    ) -> RenderResult:
        """Render ``request``; ``on_step(done, total)`` after every step, ``should_cancel()`` before every
        step and every transformer block (:class:`RenderCanceled`)."""
        (result,) = self.render_batch([RenderTask(request, on_step, should_cancel)])
        if isinstance(result, Exception):
            raise result
        return result

    def render_batch(self, tasks: Sequence[RenderTask]) -> list[RenderResult | Exception]:
        """Each job's result or error, in order: rendered one after another (no shared batch on Flux)."""
        results: list[RenderResult | Exception] = []
        for task in tasks:
            try:
                results.append(self._render_one(task))
            except (ValueError, RenderCanceled) as exc:
                results.append(exc)
        return results

    def _check(self, request: RenderRequest) -> None:
        problems = []
        if request.width % 16 or request.height % 16:
            problems.append(f"Flux sizes must be multiples of 16; got {request.width}x{request.height}")
        if request.sampler not in FLUX_SAMPLERS:
            problems.append(f"Flux samples with {', '.join(FLUX_SAMPLERS)} only; got {request.sampler!r}")
        for option in ("hires_fix", "initial_latent_strength"):
            if getattr(request, option) is not None:
                problems.append(f"{option} is not supported on Flux yet")
        if problems:
            raise ValueError("; ".join(problems))

    def _render_one(self, task: RenderTask) -> RenderResult:
        request = task.request
        self._check(request)
        timer = _Timer(torch.device(self.device))
        started = time.perf_counter()
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - request.num_images + 2)
        seeds = [seed + i for i in range(request.num_images)]
        progress = _Progress(request.steps, task.on_step, task.should_cancel)
        options = request.flux or FluxOptions()
        height, width = request.height, request.width
        with self._render_lock, torch.inference_mode():
            if progress.poll_cancel():
                raise progress.canceled or RenderCanceled("canceled before the first step")
            layout = layout_canvas(request.canvas)
            with timer("encode"):
                embeds, pooled, token_condition = encode_layout(
                    self.pipeline, layout, max_sequence_length=self.defaults["max_sequence_length"],
                    region_tokens=options.region_tokens,
                )  # fmt: skip
                inputs = FluxRegionalInputs.build(
                    token_condition,
                    token_coverage(layout, height, width),
                    regional_options(options, request.steps),
                    self._attention_backend,
                )
                inputs.prepare(self.pipeline._execution_device, request.num_images)

            def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                inputs.on_step_end(pipe, step, timestep, kwargs)
                progress.advance()
                if step + 1 < request.steps and progress.poll_cancel():
                    raise progress.canceled or RenderCanceled("canceled")
                return {}

            self._progress = progress
            try:
                with timer("denoise"):
                    latents = self.pipeline(
                        prompt_embeds=embeds, pooled_prompt_embeds=pooled, height=height, width=width,
                        num_inference_steps=request.steps, guidance_scale=request.guidance_scale,
                        num_images_per_prompt=request.num_images,
                        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
                        joint_attention_kwargs={"regional": inputs}, callback_on_step_end=on_step_end,
                        max_sequence_length=self.defaults["max_sequence_length"], output_type="latent",
                    ).images  # fmt: skip
            finally:
                self._progress = None
            with timer("decode"):
                images = [self._decode(latent[None], height, width) for latent in latents]
        return RenderResult(
            images=images, seeds=seeds, timings={**timer.seconds, "total": time.perf_counter() - started}
        )

    def _check_cancel_hook(self, module: torch.nn.Module, args: Any) -> None:
        progress = self._progress
        if progress is not None and not torch.compiler.is_compiling() and progress.poll_cancel():
            raise progress.canceled or RenderCanceled("canceled")

    def _decode(self, packed: torch.Tensor, height: int, width: int) -> Any:
        """One image's packed latents to a PIL image (what FluxPipeline's output_type="pil" does)."""
        pipe, vae = self.pipeline, self.pipeline.vae
        latents = pipe._unpack_latents(packed, height, width, pipe.vae_scale_factor)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type="pil")[0]


def _round16(side: int) -> int:
    return max(64, side // 16 * 16)
