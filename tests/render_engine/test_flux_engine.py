"""The Flux engine as the worker drives it (tiny Flux, CPU): family detection, whole jobs, progress,
cancel, [dev]/[schnell] defaults, and the request fitted to the model it names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from render_service.engine import ModelNotFoundError, RenderCanceled
from render_service.engine.detect import detect_family
from render_service.engine.flux_regional import condition_prompt
from shared.jobs import RenderRequest
from shared.layout import layout_canvas
from shared.models import ModelMismatch, fit_request
from tests.support import regions_canvas

canvas = regions_canvas


def request(conditions: int = 1, **overrides: Any) -> RenderRequest:
    fields = {"canvas": canvas(conditions), "width": 64, "height": 64, "steps": 2, "seed": 5, "sampler": "euler"}
    return RenderRequest.model_validate({**fields, **overrides})


@pytest.fixture(scope="module")
def flux(tiny_flux: Path) -> Any:
    from render_service.engine.serving import load_engine

    return load_engine(str(tiny_flux), device="cpu")


def test_family_is_read_from_the_checkpoint(tiny_flux: Path, tiny_model: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    assert detect_family(str(tiny_flux)) == "flux" and detect_family(str(tiny_model)) == "sdxl"
    assert detect_family("tiny-flux-schnell") == "flux" and detect_family("tiny") == "sdxl"
    (tmp_path / "f2").mkdir()
    (tmp_path / "f2" / "model_index.json").write_text(json.dumps({"_class_name": "Flux2Pipeline"}))
    with pytest.raises(ModelNotFoundError, match=r"Flux\.2"):
        detect_family(str(tmp_path / "f2"))
    # A single file in Black Forest Labs' layout (only the tensors diffusers looks at, tiny).
    bfl = {"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(1), "img_in.weight": torch.zeros(1, 64)}
    save_file(bfl, str(tmp_path / "schnell.safetensors"))
    assert detect_family(str(tmp_path / "schnell.safetensors")) == "flux"
    save_file({"some.other.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ModelNotFoundError, match="cannot render"):
        detect_family(str(tmp_path / "other.safetensors"))


def test_one_region_job_equals_stock_flux_pipeline(flux: Any) -> None:
    from diffusers import FluxPipeline

    ours = np.asarray(flux.render(request(1, num_images=2, guidance_scale=3.5)).images[1], dtype=np.int16)
    stock_pipe = FluxPipeline(**flux.pipeline.components)
    # The global condition's prompt as the engine gives T5 and CLIP (its prefixes and suffixes joined).
    prompt = condition_prompt(layout_canvas(request(1).canvas).conditions[0])
    generators = [torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)]
    with flux._render_lock:  # the processors are ours with no regional inputs: stock attention
        stock = stock_pipe(
            prompt, height=64, width=64, num_inference_steps=2, guidance_scale=3.5, num_images_per_prompt=2,
            generator=generators, max_sequence_length=512,
        ).images[1]  # fmt: skip
    assert np.abs(ours - np.asarray(stock, dtype=np.int16)).max() <= 1


@pytest.mark.parametrize("conditions", [5, 12])
def test_regional_jobs_report_every_step(flux: Any, conditions: int) -> None:
    steps: list[tuple[int, int]] = []
    result = flux.render(request(conditions, steps=3), on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]
    assert result.images[0].size == (64, 64) and np.asarray(result.images[0]).std() > 0
    assert set(result.timings) >= {"encode", "denoise", "decode", "total"}


def test_cancel_stops_within_a_step(flux: Any) -> None:
    asked: list[int] = []
    steps: list[int] = []

    def should_cancel() -> bool:
        asked.append(len(steps))
        return len(steps) >= 1  # after the first step: the next block asks and stops

    with pytest.raises(RenderCanceled):
        flux.render(request(5, steps=5), on_step=lambda done, total: steps.append(done), should_cancel=should_cancel)
    assert steps == [1]
    # And the engine is still usable (the lock is released, no regional state left over).
    assert len(flux.render(request(1)).images) == 1


def test_attention_setting_chooses_the_joint_backend(flux: Any, tiny_flux: Path) -> None:
    """OMOST_RENDER_ATTENTION on Flux: packed unless set; sdpa (the dense mask) draws the same
    picture; flex (SDXL only) is refused with the reason and the engine keeps its backend."""
    from render_service.engine.backends import AttentionConfigError
    from render_service.engine.serving import load_engine

    assert flux.attention == "packed"
    packed = np.asarray(flux.render(request(5)).images[0], dtype=np.int16)
    try:
        flux.set_attention("sdpa")
        dense = np.asarray(flux.render(request(5)).images[0], dtype=np.int16)
    finally:
        flux.set_attention("packed")
    assert np.abs(packed - dense).max() <= 1
    with pytest.raises(AttentionConfigError, match="this model family's is joint"):
        flux.set_attention("flex")
    assert flux.attention == "packed"
    with pytest.raises(AttentionConfigError, match="'flex' cannot run here"):
        load_engine(str(tiny_flux), device="cpu", attention="flex")


def test_flux_refuses_what_it_cannot_do(flux: Any) -> None:
    with pytest.raises(ValueError, match="multiples of 16"):
        flux.render(request(width=72))
    with pytest.raises(ValueError, match="euler"):
        flux.render(request(sampler="dpmpp_2m_karras"))


def test_schnell_is_told_apart_and_has_its_defaults() -> None:
    from render_service.engine.serving import load_engine, model_info

    engine = load_engine("tiny-flux-schnell", device="cpu")
    info = model_info(engine, "schnell")
    assert (info.variant, info.default_steps, info.default_guidance_scale) == ("schnell", 4, 0.0)
    assert info.size_multiple == 16 and info.samplers == ["euler"] and info.family == "flux"


def test_a_request_is_fitted_to_its_model(flux: Any) -> None:
    from render_service.engine.serving import model_info

    info = model_info(flux, "flux-dev")
    fitted = fit_request(RenderRequest.model_validate({"canvas": canvas(1), "model": "flux-dev"}), info)
    assert (fitted.steps, fitted.guidance_scale, fitted.sampler) == (28, 3.5, "euler")
    kept = fit_request(RenderRequest.model_validate({"canvas": canvas(1), "steps": 3}), info)
    assert kept.steps == 3
    wrong = {"canvas": canvas(1), "sampler": "ddim", "width": 1000, "hires_fix": {}, "negative_prompt": "blur"}
    with pytest.raises(ModelMismatch) as caught:
        fit_request(RenderRequest.model_validate(wrong), info)
    assert [field for field, _ in caught.value.errors] == ["sampler", "width", "negative_prompt", "hires_fix"]
    assert "multiples of 16" in str(caught.value)


def test_flux_bench_runs_its_tables_on_the_tiny_flux(tmp_path: Path) -> None:
    """bench/flux_bench.py (the GPU run's Flux side, --shape full) goes through the same code on the tiny Flux."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[2] / "bench" / "flux_bench.py"
    spec = importlib.util.spec_from_file_location("flux_bench", bench)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["flux_bench"] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        rows = module.main(["--size", "64", "--steps", "2", "--repeats", "1", "--regions", "1,5",
                            "--json", str(tmp_path / "flux.json")])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    expected = [("eager", 1, "packed"), ("eager", 5, "packed")]  # Flux's default joint backend
    assert [(r["table"], r["conditions"], r["attention"]) for r in rows] == expected
    assert all(r["stock_s"] > 0 and r["ours_s"] > 0 for r in rows) and rows[1]["text_tokens"] > rows[0]["text_tokens"]
    assert json.loads((tmp_path / "flux.json").read_text())["rows"] == rows
    with pytest.raises(SystemExit) as parsed:
        module.main(["--shape", "full", "--variant", "schnell", "--compile", "--help"])
    assert parsed.value.code == 0
