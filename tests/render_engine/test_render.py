"""Tiny-model renders on CPU through the real loading path (no mocks of diffusers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from render_service.engine import ModelNotFoundError, RenderCanceled, RenderEngine, RenderResult
from shared.jobs import HiresFix, RenderRequest

CANVAS = {
    "global_description": {
        "description": "A cat and a dog on a sofa.",
        "detailed_descriptions": ["A cozy living room.", "Warm evening light."],
        "tags": "cat, dog, sofa, living room",
        "HTML_web_color_name": "beige",
    },
    "local_descriptions": [
        {
            "location": "on the left",
            "offset": "no offset",
            "area": "a medium-sized square area",
            "distance_to_viewer": 2.0,
            "description": "A brown dog.",
            "detailed_descriptions": ["Floppy ears.", "Wagging tail."],
            "tags": "dog",
            "HTML_web_color_name": "saddlebrown",
        },
        {
            "location": "on the right",
            "offset": "no offset",
            "area": "a small square area",
            "distance_to_viewer": 1.5,
            "description": "A grey cat.",
            "detailed_descriptions": ["Green eyes."],
            "tags": "cat",
            "HTML_web_color_name": "gray",
        },
    ],
}


def request(**overrides) -> RenderRequest:
    values = {"canvas": CANVAS, "width": 64, "height": 64, "steps": 3, "seed": 7}
    values.update(overrides)
    return RenderRequest.model_validate(values)


def pixels(result: RenderResult) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


def test_images_sizes_and_seeds(engine: RenderEngine) -> None:
    req = request(width=96, height=64, num_images=2, seed=11)
    first = engine.render(req)
    assert first.seeds == [11, 12]
    assert [im.size for im in first.images] == [(96, 64), (96, 64)]
    assert all(im.mode == "RGB" for im in first.images)
    assert set(first.timings) == {"encode", "denoise", "decode", "total"}
    assert first.timings["total"] >= first.timings["denoise"] > 0

    again = engine.render(req)
    assert all(np.array_equal(a, b) for a, b in zip(pixels(first), pixels(again), strict=True))
    assert not np.array_equal(pixels(first)[0], pixels(first)[1]), "image i uses seed + i"
    other = engine.render(req.model_copy(update={"seed": 12345}))
    assert not np.array_equal(pixels(first)[0], pixels(other)[0])


def test_random_seed_when_none(engine: RenderEngine) -> None:
    result = engine.render(request(seed=None, num_images=2))
    assert result.seeds[1] == result.seeds[0] + 1
    assert result.seeds[0] >= 0 and result.seeds[1] <= 2**32 - 1


def test_regional_attention_is_engaged_and_released(engine: RenderEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    from render_service.engine.attention import RegionalCrossAttnProcessor

    calls: list[bool] = []
    stock_call = RegionalCrossAttnProcessor.__call__

    def spy(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, regional=None):
        calls.append(regional is not None and self.name in regional)
        return stock_call(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb, regional)

    monkeypatch.setattr(RegionalCrossAttnProcessor, "__call__", spy)
    progress = []
    engine.render(request(), on_step=lambda done, total: progress.append((done, total)))
    assert progress == [(1, 3), (2, 3), (3, 3)]
    layers = sum(name.endswith("attn2.processor") for name in engine.unet.attn_processors)
    assert calls and len(calls) == 3 * layers and all(calls), "every cross-attention got the job's inputs"
    assert engine._cancel_check is None, "nothing of the job is left on the engine"


def test_hires_and_initial_latent(engine: RenderEngine) -> None:
    progress = []
    req = request(initial_latent_strength=0.6, hires_fix=HiresFix(scale=1.5, steps=2, denoise=0.5))
    result = engine.render(req, on_step=lambda done, total: progress.append((done, total)))
    assert result.images[0].size == (96, 96)
    assert progress == [(i, 5) for i in range(1, 6)], "progress covers base and hires passes"
    assert np.isfinite(pixels(result)[0]).all()
    plain = engine.render(request())
    assert not np.array_equal(pixels(engine.render(request(initial_latent_strength=0.6)))[0], pixels(plain)[0])


def test_cancel_stops_cleanly(engine: RenderEngine) -> None:
    progress = []
    with pytest.raises(RenderCanceled):
        engine.render(
            request(steps=6), on_step=lambda d, t: progress.append(d), should_cancel=lambda: len(progress) >= 2
        )
    assert progress == [1, 2]
    assert engine._cancel_check is None
    assert len(engine.render(request()).images) == 1, "the engine renders again after a cancel"


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler", "euler_ancestral", "ddim", "unipc"])
def test_samplers(engine: RenderEngine, sampler: str) -> None:
    req = request(sampler=sampler, steps=2)
    first = pixels(engine.render(req))[0]
    assert first.shape == (64, 64, 3)
    if sampler == "euler_ancestral":  # the one that draws noise every step: still reproducible
        assert np.array_equal(first, pixels(engine.render(req))[0])


def test_without_guidance(engine: RenderEngine) -> None:
    assert engine.render(request(guidance_scale=1.0)).images[0].size == (64, 64)


def test_load_is_once_per_process(engine: RenderEngine, tiny_model: Path) -> None:
    assert RenderEngine.load(str(tiny_model), device="cpu") is engine
    assert engine.model_name == str(tiny_model) and engine.device == "cpu"


@pytest.mark.parametrize(
    ("model", "expect"),
    [
        ("/nonexistent/sdxl-folder", "/nonexistent/sdxl-folder"),
        ("./models/missing.safetensors", "missing.safetensors"),
        ("not a hub id", "owner/name"),
    ],
)
def test_missing_model_is_a_clear_error(model: str, expect: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        RenderEngine.load(model, device="cpu")
    message = str(info.value)
    assert expect in message
    assert "diffusers folder" in message and ".safetensors" in message and "hub id" in message


def test_folder_that_is_not_a_pipeline(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelNotFoundError, match=r"model_index\.json"):
        RenderEngine.load(str(tmp_path), device="cpu")


def test_unknown_hub_id_is_a_clear_error() -> None:
    with pytest.raises(ModelNotFoundError) as info:
        RenderEngine.load("omost-service-tests/no-such-sdxl-model", device="cpu")
    assert "omost-service-tests/no-such-sdxl-model" in str(info.value) and "hub" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__, "no library stack trace"


def test_bf16_render(tiny_model: Path) -> None:
    engine = RenderEngine.load(str(tiny_model), device="cpu", dtype="bf16")
    result = engine.render(request(steps=2))
    assert engine.unet.dtype.is_floating_point and str(engine.dtype) == "torch.bfloat16"
    image = pixels(result)[0]
    assert image.shape == (64, 64, 3) and image.std() > 0


def test_global_only_canvas_matches_stock_diffusers(engine: RenderEngine) -> None:
    """With one condition covering everything, ours must be stock SDXL fed the same embeddings.

    This pins the sampling loop (noise, scheduler, CFG, micro-conditioning, decoding) to diffusers'
    own ``StableDiffusionXLPipeline``.
    """
    import torch
    from diffusers import StableDiffusionXLPipeline

    from render_service.engine.schedulers import make_scheduler
    from shared.layout import layout_canvas

    canvas = {"global_description": {"description": "A red apple on a table.", "HTML_web_color_name": "red"}}
    req = request(canvas=canvas, steps=4, num_images=2, seed=5)
    ours_images = pixels(engine.render(req))

    encoded = engine.text.encode(layout_canvas(req.canvas), req.negative_prompt, torch.float32)
    assert encoded.tokens.shape[1] == 2 * 77  # negative + one bag
    components = dict(engine.pipeline.components)
    components["scheduler"] = make_scheduler(req.sampler, engine.pipeline.scheduler.config)
    stock = StableDiffusionXLPipeline(**components)
    stock.set_progress_bar_config(disable=True)
    with torch.inference_mode():
        output = stock(
            prompt_embeds=encoded.tokens[:, 77:],
            negative_prompt_embeds=encoded.tokens[:, :77],
            pooled_prompt_embeds=encoded.pooled_positive,
            negative_pooled_prompt_embeds=encoded.pooled_negative,
            height=req.height,
            width=req.width,
            num_inference_steps=req.steps,
            guidance_scale=req.guidance_scale,
            num_images_per_prompt=2,
            generator=[torch.Generator("cpu").manual_seed(s) for s in (5, 6)],
        )
    for ours_image, stock_image in zip(ours_images, output.images, strict=True):
        difference = np.abs(ours_image.astype(int) - np.asarray(stock_image).astype(int))
        assert difference.max() <= 2, difference.max()
