"""The render engine: an SDXL pipeline driven by our own sampling loop.

We use diffusers' components (UNet, VAE, text encoders, schedulers) but not its ``__call__``:
Omost's conditioning needs a text sequence whose length differs between the negative and the
positive half of the CFG batch, masks per attention resolution, a per-step cancel check and
progress across two passes (base + hires). The loop is short and every line of it is ours to
reason about; the expensive parts (UNet, VAE, SDPA) are stock.
"""

from __future__ import annotations

import inspect
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from render_service.engine.attention import RegionalAttentionState, RegionalJob, install_regional_processors
from render_service.engine.loading import load_pipeline, resolve_device, resolve_dtype
from render_service.engine.schedulers import make_scheduler
from render_service.engine.text import EncodedText, OmostTextEncoder
from render_service.engine.types import RenderCanceled, RenderResult
from shared.jobs import MAX_SEED, RenderRequest
from shared.layout import CanvasLayout, layout_canvas

OnStep = Callable[[int, int], None]
ShouldCancel = Callable[[], bool]

INITIAL_LATENT_BLUR = 40
"""Omost blurs its 90x90 colour composition with an 81x81 box (reflect-padded) before encoding."""
MAX_HIRES_SIDE = 4096


@dataclass
class _Pass:
    """One denoising pass: a fresh scheduler and the timesteps it will run."""

    scheduler: Any
    timesteps: torch.Tensor
    begin: int


class RenderEngine:
    """One loaded SDXL model that renders Omost canvases, one job at a time."""

    _loaded: ClassVar[dict[tuple[str, str, str, bool, str | None], RenderEngine]] = {}
    _load_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, pipeline: Any, *, model_name: str, device: str, dtype: torch.dtype, offloaded: bool) -> None:
        self.pipeline = pipeline
        self.model_name = model_name
        self.device = device
        self.dtype = dtype
        self.unet = pipeline.unet
        self.vae = pipeline.vae
        self.text = OmostTextEncoder(
            pipeline.tokenizer, pipeline.tokenizer_2, pipeline.text_encoder, pipeline.text_encoder_2
        )
        self.attention_state = RegionalAttentionState()
        install_regional_processors(self.unet, self.attention_state)
        self.cache_text_kv = True
        """Reuse the text key/value projections across steps (off only to measure what it saves)."""
        self._offloaded = offloaded
        self._render_lock = threading.Lock()

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
    ) -> RenderEngine:
        """Load ``model`` (hub id, diffusers folder or single .safetensors file) once per process.

        ``config`` only matters for single files: a diffusers folder or hub id with SDXL's
        component configs. Raises :class:`ModelNotFoundError` when the model cannot be found.
        """
        resolved_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, resolved_device)
        key = (str(model), resolved_device, str(torch_dtype), cpu_offload, config)
        with cls._load_lock:
            engine = cls._loaded.get(key)
            if engine is None:
                pipeline = load_pipeline(str(model), torch_dtype, config=config)
                engine = cls.from_pipeline(
                    pipeline, model_name=str(model), device=resolved_device, dtype=torch_dtype, cpu_offload=cpu_offload
                )
                cls._loaded[key] = engine
            return engine

    @classmethod
    def from_pipeline(
        cls, pipeline: Any, *, model_name: str, device: str, dtype: torch.dtype, cpu_offload: bool = False
    ) -> RenderEngine:
        """Wrap an already-built ``StableDiffusionXLPipeline`` (the benchmark's random SDXL)."""
        if pipeline.unet.dtype != dtype:
            pipeline.to(dtype=dtype)
        if dtype == torch.float16 and getattr(pipeline.vae.config, "force_upcast", False):
            # SDXL's VAE overflows in fp16 (NaN images); keep it in fp32 like diffusers does.
            pipeline.vae.to(torch.float32)
        if cpu_offload and torch.device(device).type != "cpu":
            # accelerate hooks move each model to the device only while it runs.
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.to(device)
        return cls(pipeline, model_name=model_name, device=device, dtype=dtype, offloaded=cpu_offload)

    # ------------------------------------------------------------------ rendering

    def render(
        self,
        request: RenderRequest,
        *,
        on_step: OnStep | None = None,
        should_cancel: ShouldCancel | None = None,
    ) -> RenderResult:
        """Render ``request``; ``on_step(done, total)`` after every step of every pass.

        ``should_cancel()`` is asked before every step; when it says yes the job stops there and
        :class:`RenderCanceled` is raised.
        """
        width, height = request.width, request.height
        for name, side in (("width", width), ("height", height)):
            if side % 8 or side < 64:
                raise ValueError(f"{name} must be a multiple of 8 and at least 64; got {side}")
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - request.num_images + 2)
        seeds = [seed + i for i in range(request.num_images)]
        hires = request.hires_fix
        hires_size = None
        if hires is not None:
            hires_size = (_round8(height * hires.scale), _round8(width * hires.scale))
            if max(hires_size) > MAX_HIRES_SIDE:
                raise ValueError(
                    f"hires fix would render {hires_size[1]}x{hires_size[0]}; the limit is {MAX_HIRES_SIDE} a side"
                )

        timings = {"encode": 0.0, "denoise": 0.0, "decode": 0.0, "total": 0.0}
        started = time.perf_counter()
        with self._render_lock, torch.inference_mode():
            layout = layout_canvas(request.canvas)
            passes = [self._plan(request.sampler, request.steps, request.initial_latent_strength)]
            if hires is not None:
                passes.append(self._plan(request.sampler, hires.steps, hires.denoise))
            progress = _Progress(sum(len(p.timesteps) for p in passes), on_step, should_cancel)

            mark = self._sync_time()
            encoded = self.text.encode(layout, request.negative_prompt, self.dtype)
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            latent_h, latent_w = height // self._vae_factor, width // self._vae_factor
            start = None
            if request.initial_latent_strength is not None:
                start = self._initial_latent(layout, height, width).expand(len(seeds), -1, -1, -1)
            timings["encode"] += self._sync_time() - mark

            cfg = request.guidance_scale > 1.0
            job = self._job(encoded, len(seeds), cfg)
            try:
                self.attention_state.job = job
                mark = self._sync_time()
                latents = self._denoise(
                    passes[0], start, (latent_h, latent_w), generators, encoded, request.guidance_scale, cfg,
                    (height, width), progress,
                )  # fmt: skip
                timings["denoise"] += self._sync_time() - mark
                if hires is not None and hires_size is not None:
                    # New resolutions: the base pass's projections and masks are of no further use.
                    job.kv_cache.clear()
                    job.mask_cache.clear()
                    mark = self._sync_time()
                    pixels = self._decode(latents)
                    timings["decode"] += self._sync_time() - mark
                    mark = self._sync_time()
                    pixels = F.interpolate(pixels, size=hires_size, mode="bicubic", align_corners=False).clamp(-1, 1)
                    hires_start = self._encode(pixels)
                    timings["encode"] += self._sync_time() - mark
                    mark = self._sync_time()
                    latents = self._denoise(
                        passes[1], hires_start, tuple(hires_start.shape[-2:]), generators, encoded,
                        request.guidance_scale, cfg, hires_size, progress,
                    )  # fmt: skip
                    timings["denoise"] += self._sync_time() - mark
            finally:
                # Drop the job (and its cached projections) even when canceled or failed.
                self.attention_state.job = None
                self.attention_state.latent_size = None
            mark = self._sync_time()
            images = [_to_pil(p) for p in self._decode(latents)]
            timings["decode"] += self._sync_time() - mark
        timings["total"] = time.perf_counter() - started
        return RenderResult(images=images, seeds=seeds, timings=timings)

    # ------------------------------------------------------------------ pieces

    @property
    def _vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def _exec_device(self) -> torch.device:
        # With CPU offload the models live on the CPU between calls; inputs still go to the GPU.
        return torch.device(self.device)

    def _sync_time(self) -> float:
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _plan(self, sampler: str, steps: int, strength: float | None) -> _Pass:
        """Timesteps of one pass. With a strength below 1 this is Omost's img2img schedule: the
        last ``steps`` of a ``steps / strength`` schedule, so a pass always runs exactly ``steps``."""
        scheduler = make_scheduler(sampler, self.pipeline.scheduler.config)
        if strength is None or strength >= 1.0:
            scheduler.set_timesteps(steps, device=self._exec_device)
            return _Pass(scheduler, scheduler.timesteps, 0)
        train_steps = int(scheduler.config.num_train_timesteps)
        total = min(max(steps, round(steps / strength)), train_steps)
        scheduler.set_timesteps(total, device=self._exec_device)
        begin = max(len(scheduler.timesteps) - steps, 0)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(begin)
        return _Pass(scheduler, scheduler.timesteps[begin:], begin)

    def _job(self, encoded: EncodedText, images: int, cfg: bool) -> RegionalJob:
        # Batch rows: [negative x images, positive x images] with CFG, else positive only.
        kinds = ([0] * images if cfg else []) + [1] * images
        return RegionalJob(
            token_condition=encoded.token_condition,
            condition_grids=encoded.condition_grids,
            condition_kind=encoded.condition_kind,
            row_kind=torch.tensor(kinds, dtype=torch.long),
            cache_text_kv=self.cache_text_kv,
        )

    def _noise(self, generators: list[torch.Generator], shape: tuple[int, int]) -> torch.Tensor:
        # Drawn on the CPU in fp32 so that a seed gives the same image on any device.
        channels = self.unet.config.in_channels
        noise = [torch.randn((1, channels, *shape), generator=g, dtype=torch.float32) for g in generators]
        return torch.cat(noise).to(self._exec_device)

    def _denoise(
        self,
        plan: _Pass,
        start: torch.Tensor | None,
        latent_size: tuple[int, int],
        generators: list[torch.Generator],
        encoded: EncodedText,
        guidance_scale: float,
        cfg: bool,
        pixel_size: tuple[int, int],
        progress: _Progress,
    ) -> torch.Tensor:
        scheduler, timesteps = plan.scheduler, plan.timesteps
        images = len(generators)
        noise = self._noise(generators, latent_size)
        if start is None:
            latents = noise * scheduler.init_noise_sigma
        else:
            first = timesteps[:1].repeat(images)
            latents = scheduler.add_noise(start.to(noise), noise, first)

        rows = 2 * images if cfg else images
        context = encoded.tokens.to(self._exec_device).expand(rows, -1, -1)
        pooled = torch.cat(([encoded.pooled_negative] * images if cfg else []) + [encoded.pooled_positive] * images).to(
            self._exec_device
        )
        # SDXL's micro-conditioning: original size = target size = the render, no crop.
        height, width = pixel_size
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.dtype, device=self._exec_device)
        added = {"text_embeds": pooled, "time_ids": time_ids.expand(rows, -1)}
        step_kwargs: dict[str, Any] = {}
        if "generator" in inspect.signature(scheduler.step).parameters:
            step_kwargs["generator"] = generators  # ancestral samplers: per-image noise streams

        self.attention_state.latent_size = latent_size
        for t in timesteps:
            progress.check_cancel()
            model_input = torch.cat([latents, latents]) if cfg else latents
            model_input = scheduler.scale_model_input(model_input, t).to(self.dtype)
            prediction = self.unet(
                model_input, t, encoder_hidden_states=context, added_cond_kwargs=added, return_dict=False
            )[0].float()
            if cfg:
                negative, positive = prediction.chunk(2)
                prediction = negative + guidance_scale * (positive - negative)
            latents = scheduler.step(prediction, t, latents, return_dict=False, **step_kwargs)[0]
            progress.advance()
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
        return (latent - shift) * config.scaling_factor

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
    """Counts steps over all passes of a job; reports them and checks for cancel."""

    def __init__(self, total: int, on_step: OnStep | None, should_cancel: ShouldCancel | None) -> None:
        self.total = total
        self.done = 0
        self.on_step = on_step
        self.should_cancel = should_cancel

    def check_cancel(self) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise RenderCanceled(f"canceled after {self.done} of {self.total} steps")

    def advance(self) -> None:
        self.done += 1
        if self.on_step is not None:
            self.on_step(self.done, self.total)


def _round8(value: float) -> int:
    return max(64, round(value / 8) * 8)


def _to_pil(image: torch.Tensor) -> Image.Image:
    array = ((image.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().clip(0, 255).astype(np.uint8)
    return Image.fromarray(array)
