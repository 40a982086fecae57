"""The render engine: an SDXL pipeline driven by our own sampling loop.

We use diffusers' components (UNet, VAE, text encoders, schedulers) but not its ``__call__``:
Omost's conditioning needs a text sequence whose length differs between the negative and the
positive half of the CFG batch, masks per attention resolution, a per-step cancel check and
progress across two passes (base + hires). The loop is short and every line of it is ours to
reason about; the expensive parts (UNet, VAE, the attention kernels) are stock. Jobs of equal shape
are denoised as one UNet batch (:meth:`RenderEngine.render_batch`).
"""

from __future__ import annotations

import inspect
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from opentelemetry import trace
from PIL import Image

from render_service.engine.attention import (
    LayerInputs,
    RegionalJob,
    install_regional_processors,
    mark_token_dims_dynamic,
    stack_jobs,
)
from render_service.engine.backends import DEFAULT_ATTENTION, AttentionBackend, AttentionConfigError, check_attention
from render_service.engine.batching import OnStep, RenderTask, ShouldCancel, batch_key
from render_service.engine.families import DEFAULT_FAMILY, ModelFamily, model_family
from render_service.engine.loading import load_vae, resolve_device, resolve_dtype
from render_service.engine.schedulers import make_scheduler
from render_service.engine.text import EncodedText, OmostTextEncoder
from render_service.engine.types import RenderCanceled, RenderResult
from shared.jobs import MAX_SEED, RenderRequest
from shared.layout import CanvasLayout, layout_canvas

INITIAL_LATENT_BLUR = 40
"""Omost blurs its 90x90 colour composition with an 81x81 box (reflect-padded) before encoding."""
MAX_HIRES_SIDE = 4096
DECODE_TILE = 512
"""Pixel tile of the fp32 VAE decode of an fp16 model: the full-size VAE's activations at 1024² in
fp32 are the whole render's memory peak; tiles of 512 (25 % overlap, blended) bound them."""
WARM_UP_CANVAS = {
    "global_description": {"description": "A warm-up render.", "HTML_web_color_name": "gray"},
    "local_descriptions": [
        {
            "location": "in the center",
            "offset": "no offset",
            "area": "a small square area",
            "distance_to_viewer": 1.0,
            "description": "A small box.",
            "HTML_web_color_name": "white",
        }
    ],
}


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"1024x1024,896x1152"`` -> ``[(1024, 1024), (896, 1152)]`` (width x height)."""
    sizes = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        width, sep, height = item.lower().partition("x")
        if not sep or not width.isdigit() or not height.isdigit():
            raise ValueError(f"size {item!r} is not WIDTHxHEIGHT")
        sizes.append((int(width), int(height)))
    return sizes


@dataclass
class _PassSchedule:
    """One denoising pass's schedule: a fresh scheduler and the timesteps it will run."""

    scheduler: Any
    timesteps: torch.Tensor
    begin: int


_tracer = trace.get_tracer("omost.engine")
PHASE_SPANS = {"encode": "engine encode", "denoise": "engine denoise", "decode": "engine decode"}
"""The span of each timed phase (tracing on): text encoding (and the hires pass's VAE encode), the
sampling steps, the VAE decode."""


class _Timer:
    """Seconds per phase of a render, each phase a span; the device is synchronized at each edge so
    GPU work lands in the phase that queued it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds = {"encode": 0.0, "denoise": 0.0, "decode": 0.0}

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        with _tracer.start_as_current_span(PHASE_SPANS[phase]):
            start = self._now()
            try:
                yield
            finally:
                self.seconds[phase] += self._now() - start


@dataclass
class _Prepared:
    """Everything a render needs after its text is encoded: the output of :meth:`RenderEngine._prepare`."""

    request: RenderRequest
    seeds: list[int]
    generators: list[torch.Generator]
    encoded: EncodedText
    regions: RegionalJob
    """The job's text as cross-attention sees it: which rows see which tokens, through which backend."""
    cfg: bool
    size: tuple[int, int]
    """(height, width) of the base pass in pixels."""
    hires_size: tuple[int, int] | None
    passes: list[_PassSchedule]
    start: torch.Tensor | None = None
    """The initial latent (``initial_latent_strength``), else None: start from noise."""
    progress: _Progress | None = field(default=None)


@dataclass
class _Batch:
    """Jobs denoised as one UNet batch (equal :func:`batch_key`: same size, passes and CFG).

    Rows are kind-major, ``[negatives of every job | positives of every job]`` (see
    :func:`~render_service.engine.attention.stack_jobs`), latents and noise job after job. The first
    job's scheduler plans the passes for all: schedulers act on each row alone, so one scheduler
    over the stacked latents equals one per job. A batch of one is an ordinary render.
    """

    jobs: list[_Prepared]

    @property
    def lead(self) -> _Prepared:
        return self.jobs[0]

    @property
    def image_counts(self) -> list[int]:
        """How many images each job renders, in job order."""
        return [len(job.seeds) for job in self.jobs]

    @property
    def generators(self) -> list[torch.Generator]:
        return [g for job in self.jobs for g in job.generators]

    def start(self) -> torch.Tensor | None:
        # Jobs of a batch share their initial-latent strength (batch_key): all start from a latent or none.
        starts = [job.start for job in self.jobs if job.start is not None]
        return torch.cat(starts) if starts else None

    def guidance(self, device: torch.device) -> torch.Tensor:
        """Each image's CFG scale, ``(images, 1, 1, 1)``: jobs of a batch may ask for different ones."""
        scales = [job.request.guidance_scale for job in self.jobs for _ in job.seeds]
        return torch.tensor(scales, dtype=torch.float32, device=device)[:, None, None, None]

    def pooled(self, device: torch.device) -> torch.Tensor:
        negative = [job.encoded.pooled_negative for job in self.jobs for _ in job.seeds] if self.lead.cfg else []
        positive = [job.encoded.pooled_positive for job in self.jobs for _ in job.seeds]
        return torch.cat(negative + positive).to(device)

    def check_cancel(self) -> None:
        """Ask every job; raise only when all of them are canceled. A job canceled alone keeps its rows
        until the batch ends (schedulers keep per-batch state, so rows cannot leave mid-pass), but it
        reports no more progress and its result is :class:`RenderCanceled`."""
        canceled = [job.progress.poll_cancel() for job in self.jobs if job.progress is not None]
        if all(canceled):
            raise RenderCanceled(f"canceled after {self.lead.progress.done if self.lead.progress else 0} steps")

    def advance(self) -> None:
        for job in self.jobs:
            if job.progress is not None and job.progress.canceled is None:
                job.progress.advance()


class RenderEngine:
    """One loaded SDXL model that renders Omost canvases: one batch of jobs at a time (a lock)."""

    _loaded: ClassVar[dict[tuple[Any, ...], RenderEngine]] = {}
    _load_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        pipeline: Any,
        *,
        model_name: str,
        device: str,
        dtype: torch.dtype,
        offloaded: bool,
        family: str = DEFAULT_FAMILY,
    ) -> None:
        self.pipeline = pipeline
        self.family: ModelFamily = model_family(family)
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.text = OmostTextEncoder(
            pipeline.tokenizer, pipeline.tokenizer_2, pipeline.text_encoder, pipeline.text_encoder_2
        )
        install_regional_processors(self.unet)
        self.compiled = False
        """Whether the UNet is ``torch.compile``-d (:meth:`compile_unet`)."""
        self.attention = DEFAULT_ATTENTION
        """The name of the attention backend the masked rows use; see :meth:`set_attention`."""
        self._attention_backend: AttentionBackend[Any] = self._check_attention(DEFAULT_ATTENTION, compiled=False)
        self._unet_call: Callable[..., Any] = self.unet
        self._offloaded = offloaded
        self._render_lock = threading.Lock()
        self._cancel_check: Callable[[], None] | None = None
        self._install_cancel_hooks()
        self.tiled_decode = self.vae.dtype == torch.float32 and dtype != torch.float32
        """An fp16/bf16 model whose VAE had to stay fp32 decodes in tiles (memory); see DECODE_TILE."""
        if self.tiled_decode:
            self.set_decode_tile(DECODE_TILE)

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
        vae: str | None = None,
        compile: bool = False,
        attention: str = DEFAULT_ATTENTION,
        family: str = DEFAULT_FAMILY,
    ) -> RenderEngine:
        """Load ``model`` (hub id, diffusers folder or single .safetensors file) once per process.

        ``config`` only matters for single files: a diffusers folder or hub id with SDXL's
        component configs. ``vae`` replaces the checkpoint's VAE (a hub id or diffusers folder of an
        ``AutoencoderKL``, e.g. the fp16-safe ``madebyollin/sdxl-vae-fp16-fix``). ``compile``
        compiles the UNet (see :meth:`compile_unet`); ``attention`` is :meth:`set_attention`'s;
        ``family`` the model family (:mod:`~render_service.engine.families`). Raises
        :class:`ModelNotFoundError` when the model cannot be found and
        :class:`~render_service.engine.backends.AttentionConfigError` (before loading anything) when
        the attention backend cannot run on this device, dtype, compile mode or family.
        """
        resolved_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, resolved_device)
        chosen = model_family(family)
        if chosen.attention_layout != "cross":
            # Its backends may serve joint attention too; this engine's processors are cross-attention ones.
            raise AttentionConfigError(
                f"RenderEngine renders cross-attention families; this model family's is {chosen.attention_layout}: "
                "load it with render_service.engine.serving.load_engine"
            )
        check_attention(
            attention, device=resolved_device, dtype=torch_dtype, compiled=compile,
            layout=chosen.attention_layout, contiguous_condition_tokens=chosen.contiguous_condition_tokens,
        )  # fmt: skip
        key = (str(model), resolved_device, str(torch_dtype), cpu_offload, config, vae, compile, attention, family)
        with cls._load_lock:
            engine = cls._loaded.get(key)
            if engine is None:
                pipeline = chosen.load_pipeline(str(model), torch_dtype, config)
                if vae is not None:
                    pipeline.vae = load_vae(vae, torch_dtype)
                engine = cls.from_pipeline(
                    pipeline, model_name=str(model), device=resolved_device, dtype=torch_dtype,
                    cpu_offload=cpu_offload, family=family,
                )  # fmt: skip
                if compile:
                    engine.compile_unet()
                engine.set_attention(attention)
                cls._loaded[key] = engine
            return engine

    @classmethod
    def from_pipeline(
        cls,
        pipeline: Any,
        *,
        model_name: str,
        device: str,
        dtype: torch.dtype,
        cpu_offload: bool = False,
        family: str = DEFAULT_FAMILY,
    ) -> RenderEngine:
        """Wrap an already-built ``StableDiffusionXLPipeline`` (the benchmark's random SDXL)."""
        if pipeline.unet.dtype != dtype:
            pipeline.to(dtype=dtype)
        if dtype == torch.float16 and getattr(pipeline.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in fp16 (NaN images); keep it in fp32 like diffusers does. An
            # fp16-safe VAE (force_upcast false in its config) stays fp16.
            pipeline.vae.to(torch.float32)
        if cpu_offload and torch.device(device).type != "cpu":
            # accelerate hooks move each model to the device only while it runs.
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.to(device)
        return cls(pipeline, model_name=model_name, device=device, dtype=dtype, offloaded=cpu_offload, family=family)

    def compile_unet(self, *, backend: str | Callable[..., Any] = "inductor", mode: str | None = None) -> None:
        """``torch.compile`` the UNet as one graph (``fullgraph``: a graph break is an error).

        The regional inputs are tensors passed through the call and their token dimension is
        dynamic, so one graph per latent size and batch serves every canvas. Compiling happens on
        the first call of each size: call :meth:`warm_up` before taking jobs. The attention backend
        in use must be able to run compiled; some (``flex``) run only compiled, so choose them after
        this (:meth:`set_attention`).
        """
        if self._offloaded:
            raise ValueError("compile and cpu_offload do not mix: offload hooks move weights inside the graph")
        self._check_attention(self.attention, compiled=True)
        # Each (latent size, batch) is its own static graph; without this dynamo would turn the
        # latent size symbolic after the second size and slow every later call down.
        torch._dynamo.config.automatic_dynamic_shapes = False
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        self._unet_call = torch.compile(self.unet, backend=backend, mode=mode, fullgraph=True)
        self.compiled = True

    def set_attention(self, name: str) -> None:
        """Which attention backend the masked (positive) rows use, from the next job on: one of
        :data:`~render_service.engine.backends.ATTENTION_BACKENDS` -- ``sdpa`` (default; one SDPA
        call over all of the job's tokens with an additive mask), ``packed`` (only the allowed
        pixel-token pairs, one variable-length sequence per condition) or ``flex`` (FlexAttention
        with a block mask; compiled UNets only). All give the same images within rounding; which is
        fastest depends on the device. Raises
        :class:`~render_service.engine.backends.AttentionConfigError` if the backend's constraints
        do not hold here (and keeps the current one)."""
        self._attention_backend = self._check_attention(name, compiled=self.compiled)
        self.attention = name

    def _check_attention(self, name: str, *, compiled: bool) -> AttentionBackend[Any]:
        return check_attention(
            name, device=self.device, dtype=self.dtype, compiled=compiled, layout=self.family.attention_layout,
            contiguous_condition_tokens=self.family.contiguous_condition_tokens,
        )  # fmt: skip

    def warm_up(
        self, sizes: Sequence[tuple[int, int]] = ((1024, 1024),), *, num_images: int = 1, steps: int = 2
    ) -> float:
        """Render a ``steps``-step job at each (width, height) so compilation, kernel selection and
        lazy initialisation happen now, not on a user's first job; return the seconds it took. A
        worker calls this before it claims jobs (one step at a small size when not compiled)."""
        started = time.perf_counter()
        for width, height in sizes:
            request = RenderRequest.model_validate(
                {"canvas": WARM_UP_CANVAS, "width": width, "height": height, "steps": steps, "seed": 0,
                 "num_images": num_images}
            )  # fmt: skip
            self.render(request)
        return time.perf_counter() - started

    def set_decode_tile(self, tile: int | None) -> None:
        """Decode (and encode) in tiles of ``tile`` pixels with blended overlaps; None: whole images."""
        if tile is None:
            self.vae.disable_tiling()
            return
        self.vae.enable_tiling()
        self.vae.tile_sample_min_size = tile
        self.vae.tile_latent_min_size = tile // self._vae_factor

    # ------------------------------------------------------------------ rendering

    def render(
        self,
        request: RenderRequest,
        *,
        on_step: OnStep | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> RenderResult:
        """Render ``request``; ``on_step(done, total)`` after every step of every pass.

        ``should_cancel()`` is asked before every step and, in an eager UNet, before each of its
        blocks, so a cancel takes effect within one UNet call at any size: :class:`RenderCanceled`.
        """
        (result,) = self.render_batch([RenderTask(request, on_step, should_cancel)])
        if isinstance(result, Exception):
            raise result
        return result

    def render_batch(self, tasks: Sequence[RenderTask]) -> list[RenderResult | Exception]:
        """Render jobs of equal :func:`batch_key` as one UNet batch; each job's result or error, in order.

        Each job's images equal those it gets rendered alone (same seeds; within float rounding of
        a larger batch). A job whose request is invalid gets its ``ValueError`` and the others go on;
        a job canceled mid-batch gets :class:`RenderCanceled` when the batch ends, and the batch stops
        early only when every job is canceled. Timings are the batch's, with ``batch_jobs``.
        """
        keys = {batch_key(task.request) for task in tasks}
        if len(keys) > 1:
            raise ValueError("jobs of one batch must share size, steps, sampler, strength, hires fix and CFG")
        timer = _Timer(self._exec_device)
        started = time.perf_counter()
        results: list[RenderResult | Exception | None] = [None] * len(tasks)
        with self._render_lock, torch.inference_mode():
            jobs: list[tuple[int, _Prepared]] = []
            with timer("encode"):
                for index, task in enumerate(tasks):
                    try:
                        prepared = self._prepare(task.request)
                    except ValueError as exc:
                        results[index] = exc
                        continue
                    steps = sum(len(p.timesteps) for p in prepared.passes)
                    prepared.progress = _Progress(steps, task.on_step, task.should_cancel)
                    jobs.append((index, prepared))
            if jobs:
                batch = _Batch([prepared for _, prepared in jobs])
                self._cancel_check = batch.check_cancel
                try:
                    latents = self._base_pass(batch, timer)
                    if batch.lead.hires_size is not None:
                        latents = self._hires_pass(batch, latents, timer)
                except RenderCanceled as exc:
                    for index, prepared in jobs:
                        assert prepared.progress is not None
                        results[index] = prepared.progress.canceled or exc
                    jobs = []
                finally:
                    self._cancel_check = None
            if jobs:
                with timer("decode"):
                    images = [_to_pil(p) for p in self._decode(latents)]
                timings = {**timer.seconds, "total": time.perf_counter() - started}
                if len(tasks) > 1:
                    timings["batch_jobs"] = float(len(tasks))
                for index, prepared in jobs:
                    assert prepared.progress is not None
                    count = len(prepared.seeds)
                    mine, images = images[:count], images[count:]
                    canceled = prepared.progress.canceled
                    results[index] = canceled or RenderResult(images=mine, seeds=prepared.seeds, timings=timings)
        assert all(result is not None for result in results)
        return results  # type: ignore[return-value]

    # ------------------------------------------------------------------ the steps of a render

    def _prepare(self, request: RenderRequest) -> _Prepared:
        """Check sizes, pick seeds, plan the passes, encode the text and the initial latent."""
        width, height = request.width, request.height
        for name, side in (("width", width), ("height", height)):
            if side % 8 or side < 64:
                raise ValueError(f"{name} must be a multiple of 8 and at least 64; got {side}")
        hires = request.hires_fix
        hires_size = None
        if hires is not None:
            hires_size = (_round8(height * hires.scale), _round8(width * hires.scale))
            if max(hires_size) > MAX_HIRES_SIDE:
                raise ValueError(
                    f"hires fix would render {hires_size[1]}x{hires_size[0]}; the limit is {MAX_HIRES_SIDE} a side"
                )
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - request.num_images + 2)
        seeds = [seed + i for i in range(request.num_images)]
        passes = [self._schedule_pass(request.sampler, request.steps, request.initial_latent_strength)]
        if hires is not None:
            passes.append(self._schedule_pass(request.sampler, hires.steps, hires.denoise))

        layout = layout_canvas(request.canvas)
        encoded = self.text.encode(layout, request.negative_prompt, self.dtype)
        cfg = request.guidance_scale > 1.0
        start = None
        if request.initial_latent_strength is not None:
            start = self._initial_latent(layout, height, width).expand(len(seeds), -1, -1, -1)
        return _Prepared(
            request=request,
            seeds=seeds,
            generators=[torch.Generator("cpu").manual_seed(s) for s in seeds],
            encoded=encoded,
            regions=self._regions(encoded, len(seeds), cfg),
            cfg=cfg,
            size=(height, width),
            hires_size=hires_size,
            passes=passes,
            start=start,
        )

    def _base_pass(self, batch: _Batch, timer: _Timer) -> torch.Tensor:
        height, width = batch.lead.size
        latent_size = (height // self._vae_factor, width // self._vae_factor)
        with timer("denoise"):
            return self._denoise(batch, batch.lead.passes[0], batch.start(), latent_size, batch.lead.size)

    def _hires_pass(self, batch: _Batch, latents: torch.Tensor, timer: _Timer) -> torch.Tensor:
        """Omost's hires fix: decode, bicubic upscale, encode, then an img2img pass at the new size."""
        hires_size = batch.lead.hires_size
        assert hires_size is not None
        with timer("decode"):
            pixels = self._decode(latents)
        with timer("encode"):
            pixels = F.interpolate(pixels, size=hires_size, mode="bicubic", align_corners=False).clamp(-1, 1)
            start = self._encode(pixels)
        with timer("denoise"):
            return self._denoise(batch, batch.lead.passes[1], start, (start.shape[-2], start.shape[-1]), hires_size)

    # ------------------------------------------------------------------ pieces

    @property
    def _vae_factor(self) -> int:
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @property
    def _exec_device(self) -> torch.device:
        # With CPU offload the models live on the CPU between calls; inputs still go to the GPU.
        return torch.device(self.device)

    def _install_cancel_hooks(self) -> None:
        """Ask ``should_cancel`` before each UNet block, so one huge UNet call cannot outlive a cancel.

        Inside a compiled graph the check is skipped (a Python callback there would break the
        graph); compiled calls are short, and the check before every step still holds.
        """

        def check(module: torch.nn.Module, args: Any) -> None:
            if torch.compiler.is_compiling():
                return
            if self._cancel_check is not None:
                self._cancel_check()

        blocks = [*self.unet.down_blocks, self.unet.mid_block, *self.unet.up_blocks]
        for block in blocks:
            if block is not None:
                block.register_forward_pre_hook(check)

    def _schedule_pass(self, sampler: str, steps: int, strength: float | None) -> _PassSchedule:
        """Timesteps of one pass. With a strength below 1 this is Omost's img2img schedule: the
        last ``steps`` of a ``steps / strength`` schedule, so a pass always runs exactly ``steps``."""
        scheduler = make_scheduler(sampler, self.pipeline.scheduler.config)
        if strength is None or strength >= 1.0:
            scheduler.set_timesteps(steps, device=self._exec_device)
            return _PassSchedule(scheduler, scheduler.timesteps, 0)
        train_steps = int(scheduler.config.num_train_timesteps)
        total = min(max(steps, round(steps / strength)), train_steps)
        scheduler.set_timesteps(total, device=self._exec_device)
        begin = max(len(scheduler.timesteps) - steps, 0)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        return _PassSchedule(scheduler, scheduler.timesteps[begin:], begin)

    def _regions(self, encoded: EncodedText, images: int, cfg: bool) -> RegionalJob:
        # Batch rows: [negative x images, positive x images] with CFG, else positive only.
        kinds = ([0] * images if cfg else []) + [1] * images
        return RegionalJob(
            token_condition=encoded.token_condition,
            condition_grids=encoded.condition_grids,
            condition_kind=encoded.condition_kind,
            row_kind=torch.tensor(kinds, dtype=torch.long),
            backend=self._attention_backend,
            bucket_tokens=self.compiled,
        )

    def _regional_inputs(self, batch: _Batch, latent_size: tuple[int, int]) -> dict[str, LayerInputs]:
        """The per-job tensors every cross-attention layer gets through the UNet call (one pass)."""
        hook = getattr(self.unet, "_hf_hook", None)
        if hook is not None:
            # cpu_offload: the projections use the UNet's weights, which accelerate moves to the
            # device only in its pre-forward hook; run that hook now.
            hook.pre_forward(self.unet)
        per_job = [
            prepared.regions.cross_attention_inputs(
                self.unet, prepared.encoded.tokens.to(self._exec_device), latent_size, self.dtype
            )
            for prepared in batch.jobs
        ]
        inputs = stack_jobs(per_job, batch.image_counts, batch.lead.cfg)
        if self.compiled:
            mark_token_dims_dynamic(inputs)
        return inputs

    def _noise(self, generators: list[torch.Generator], shape: tuple[int, int]) -> torch.Tensor:
        # Drawn on the CPU in fp32 so that a seed gives the same image on any device.
        channels = self.unet.config.in_channels
        noise = [torch.randn((1, channels, *shape), generator=g, dtype=torch.float32) for g in generators]
        return torch.cat(noise).to(self._exec_device)

    def _denoise(
        self,
        batch: _Batch,
        schedule: _PassSchedule,
        start: torch.Tensor | None,
        latent_size: tuple[int, int],
        pixel_size: tuple[int, int],
    ) -> torch.Tensor:
        scheduler, timesteps = schedule.scheduler, schedule.timesteps
        generators, cfg = batch.generators, batch.lead.cfg
        images = len(generators)
        noise = self._noise(generators, latent_size)
        latents: torch.Tensor
        if start is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            first = timesteps[:1].repeat(images)
            latents = scheduler.add_noise(start.to(noise), noise, first)

        rows = 2 * images if cfg else images
        # The processors read each job's text through ``regional``; the UNet's signature still
        # wants a sequence per row, and the first job's serves (nothing else in SDXL reads it).
        context = batch.lead.encoded.tokens.to(self._exec_device).expand(rows, -1, -1)
        pooled = batch.pooled(self._exec_device)
        guidance = batch.guidance(self._exec_device)
        # SDXL's micro-conditioning: original size = target size = the render, no crop.
        height, width = pixel_size
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype, device=self._exec_device)
        added = {"text_embeds": pooled, "time_ids": time_ids.expand(rows, -1)}
        step_kwargs: dict[str, Any] = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = generators  # ancestral samplers: per-image noise streams

        regional = {"regional": self._regional_inputs(batch, latent_size)}
        if self.compiled:
            # The processors read the text through ``regional``; the raw sequence still passes
            # through the UNet's signature, so its length must not be a guard either.
            torch._dynamo.maybe_mark_dynamic(context, 1)
        for t in timesteps:
            batch.check_cancel()
            model_input = torch.cat([latents, latents]) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t).to(self.dtype)
            prediction = self._unet_call(
                model_input, t, encoder_hidden_states=context, added_cond_kwargs=added,
                cross_attention_kwargs=regional, return_dict=False,
            )[0].float()  # fmt: skip
            if cfg:
                negative, positive = prediction.chunk(2)
                prediction = negative + guidance * (positive - negative)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            batch.advance()
        return latents

    def _initial_latent(self, layout: CanvasLayout, height: int, width: int) -> torch.Tensor:
        """Omost's initial latent: the colour composition, box-blurred, resized, VAE-encoded."""
        image = torch.from_numpy(layout.initial_image().astype(np.float32))[None].movedim(-1, 1) / 127.5 - 1.0
        blur = INITIAL_LATENT_BLUR
        image = F.avg_pool2d(F.pad(image, (blur,) * 4, mode="reflect"), kernel_size=2 * blur + 1, stride=1)
        image = F.interpolate(image, size=(height, width))  # nearest, as Omost
        return self._encode(image.to(self._exec_device))

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """VAE-encode images in [-1, 1] to scaled latents (the distribution's mode, as Omost)."""
        config = self.vae.config
        latents = []
        for image in pixels:  # one at a time: the VAE is the memory peak at large sizes
            dist = self.vae.encode(image[None].to(self._exec_device, self.vae.dtype)).latent_dist
            latents.append(dist.mode().float())
        latent = torch.cat(latents)
        shift = getattr(config, "shift_factor", None) or 0.0
        scaled: torch.Tensor = (latent - shift) * config.scaling_factor
        return scaled

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents to images in [-1, 1], float32 on the CPU."""
        config = self.vae.config
        shift = getattr(config, "shift_factor", None) or 0.0
        images = []
        for latent in latents:
            latent = latent[None] / config.scaling_factor + shift
            images.append(self.vae.decode(latent.to(self._exec_device, self.vae.dtype), return_dict=False)[0].float())
        return torch.cat(images).clamp(-1, 1).cpu()


class _Progress:
    """Counts steps over all passes of a job; reports them and remembers whether it was canceled."""

    def __init__(self, total: int, on_step: OnStep | None, should_cancel: ShouldCancel | None) -> None:
        self.total = total
        self.done = 0
        self.on_step = on_step
        self.should_cancel = should_cancel
        self.canceled: RenderCanceled | None = None

    def poll_cancel(self) -> bool:
        """Whether the job is canceled; asks ``should_cancel`` until it first says yes."""
        if self.canceled is None and self.should_cancel is not None and self.should_cancel():
            self.canceled = RenderCanceled(f"canceled after {self.done} of {self.total} steps")
        return self.canceled is not None

    def advance(self) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, self.total)


def _round8(value: float) -> int:
    return max(64, round(value / 8) * 8)


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)
