"""Omost's regions on the tiny Flux: masked joint attention through diffusers attention processors,
on each backend that serves it (``packed``, Flux's default, and the dense ``sdpa``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from render_service.engine.backends import joint_backend
from render_service.engine.flux_regional import (
    FluxRegionalInputs,
    FluxRegionalOptions,
    condition_prompt,
    install_flux_regional_processors,
    joint_allowed,
    reference_joint_attention,
    render_regional_flux,
    token_coverage,
)
from shared.canvas import Canvas
from shared.layout import layout_canvas

REGION = {"offset": "no offset", "area": "a large vertical area", "detailed_descriptions": [], "tags": ""}
CANVAS = {
    "global_description": {"description": "A cat and a dog on a sofa.", "HTML_web_color_name": "beige"},
    "local_descriptions": [
        {**REGION, "location": "on the left", "distance_to_viewer": 2.0, "description": "A brown dog.",
         "HTML_web_color_name": "saddlebrown"},
        {**REGION, "location": "on the right", "distance_to_viewer": 1.5, "description": "A grey cat.",
         "HTML_web_color_name": "gray"},
    ],
}  # fmt: skip
SIZE = 64
TEXT = 16
"""max_sequence_length per prompt: short, so the tiny model stays fast."""
JOINT = ["packed", "sdpa"]
"""The backends that serve Flux's joint attention."""


@pytest.fixture(scope="module")
def pipe(tiny_flux: Path) -> Any:
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(str(tiny_flux))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def render(pipe: Any, canvas: dict[str, Any], attention: str | None = None, **options: Any) -> np.ndarray:
    install_flux_regional_processors(pipe.transformer)
    output = render_regional_flux(
        pipe, layout_canvas(Canvas.model_validate(canvas)), height=SIZE, width=SIZE,
        options=FluxRegionalOptions(**options), max_sequence_length=TEXT, num_inference_steps=2,
        generator=torch.Generator().manual_seed(3), output_type="np", attention=attention,
    )  # fmt: skip
    return np.asarray(output.images[0])


def test_joint_mask_follows_the_rules() -> None:
    # Global: 2 tokens, covers everything; region 1: 2 tokens, pixels 0-1; region 2: 1 token, pixels 2-3.
    token_condition = torch.tensor([0, 0, 1, 1, 2])
    covered = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=torch.bool)
    expected = [
        # g g r1 r1 r2 | p0 p1 p2 p3
        "110001111",  # global text: itself and every pixel
        "110001111",
        "001101100",  # region 1 text: itself and its pixels
        "001101100",
        "000010011",  # region 2 text
        "111101111",  # pixel 0: global + region 1 text, every pixel
        "111101111",
        "110011111",  # pixel 2: global + region 2 text
        "110011111",
    ]
    want = torch.tensor([[c == "1" for c in row] for row in expected])
    assert torch.equal(joint_allowed(token_condition, covered), want)


def attention_case(
    pipe: Any, kind: str, dtype: torch.dtype, area_weighting: bool = True, attention: str = "packed"
) -> tuple[Any, dict[str, Any], FluxRegionalInputs]:
    """One attention layer of the tiny Flux with random inputs and a two-region canvas."""
    transformer = pipe.transformer
    block = transformer.transformer_blocks[0] if kind == "double" else transformer.single_transformer_blocks[0]
    attn = block.attn.to(dtype)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    layout = layout_canvas(Canvas.model_validate(CANVAS))
    covered = token_coverage(layout, SIZE, SIZE)
    pixels = covered.shape[1]
    token_condition = torch.arange(3).repeat_interleave(4)
    generator = torch.Generator().manual_seed(0)
    text = torch.randn(1, len(token_condition), width, generator=generator, dtype=dtype)
    image = torch.randn(1, pixels, width, generator=generator, dtype=dtype)
    ids = torch.cat(
        [torch.zeros(len(token_condition), 3), pipe._prepare_latent_image_ids(1, SIZE // 16, SIZE // 16, "cpu", dtype)]
    )
    rotary = tuple(t.to(dtype) for t in transformer.pos_embed(ids))
    if kind == "double":
        args = dict(hidden_states=image, encoder_hidden_states=text, image_rotary_emb=rotary)
    else:
        args = dict(hidden_states=torch.cat([text, image], dim=1), image_rotary_emb=rotary)
    options = FluxRegionalOptions(base_ratio=0.3, area_weighting=area_weighting)
    inputs = FluxRegionalInputs.build(token_condition, covered, options, joint_backend(attention))
    return attn, args, inputs


@pytest.mark.parametrize("attention", JOINT)
@pytest.mark.parametrize("area_weighting", [True, False])
@pytest.mark.parametrize("kind", ["double", "single"])
def test_processor_equals_float64_reference(pipe: Any, kind: str, area_weighting: bool, attention: str) -> None:
    from render_service.engine.flux_regional import FluxRegionalAttnProcessor

    attn, args, inputs = attention_case(pipe, kind, torch.float64, area_weighting, attention)
    processor = FluxRegionalAttnProcessor(kind, 0)
    calls: list[tuple[Any, ...]] = []
    kernel = processor.attend
    processor.attend = lambda r, q, k, v, b: calls.append((r, q, k, v, b)) or kernel(r, q, k, v, b)  # type: ignore[func-returns-value]
    try:
        out = processor(attn, **args, regional=inputs)
    finally:
        attn.to(torch.float32)
    assert len(calls) == 1, "one call per masked block: the base pass comes with the masked one"
    regional, q, k, v, base = calls[0]
    assert regional is inputs and regional.backend.name == attention and base is True
    score_scale = inputs.score_scale()
    assert (score_scale is not None and score_scale.max() > 1) == area_weighting, "the regions are smaller"
    assert inputs.allowed is not None and inputs.base_allowed is not None
    masked = reference_joint_attention(q, k, v, inputs.allowed, score_scale)
    base_pass = reference_joint_attention(q, k, v, inputs.base_allowed)
    text = inputs.text_length
    mixed = torch.cat([masked[:, :text], 0.3 * base_pass[:, text:] + 0.7 * masked[:, text:]], dim=1).flatten(2, 3)
    if kind == "double":
        attn.to(torch.float64)
        expected_image = attn.to_out[0](mixed[:, text:])
        expected_text = attn.to_add_out(mixed[:, :text])
        attn.to(torch.float32)
        torch.testing.assert_close(out[0], expected_image, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out[1], expected_text, rtol=1e-9, atol=1e-9)
    else:
        torch.testing.assert_close(out, mixed, rtol=1e-9, atol=1e-9)


def random_job(conditions: int, pixels: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_condition, covered)`` of a job with ``conditions`` conditions: overlapping random
    regions of 1-6 tokens each, the last one covering no image token (when there are regions)."""
    generator = torch.Generator().manual_seed(seed)
    covered = torch.rand(conditions, pixels, generator=generator) < 0.4
    covered[0] = True
    if conditions > 2:
        covered[-1] = False
    lengths = torch.randint(1, 7, (conditions,), generator=generator)
    return torch.arange(conditions).repeat_interleave(lengths), covered


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("conditions", [1, 5, 12])
@pytest.mark.parametrize("attention", JOINT)
def test_joint_backend_equals_float64_reference(attention: str, conditions: int, rows: int) -> None:
    """Overlapping regions and a region covering no token, the area factor on, masked and base pass."""
    token_condition, covered = random_job(conditions)
    inputs = FluxRegionalInputs.build(token_condition, covered, FluxRegionalOptions(), joint_backend(attention))
    backend = joint_backend(attention)
    scale = inputs.key_scale[: inputs.text_length] if inputs.key_scale is not None else None
    mask = backend.joint_mask(token_condition, covered, scale, rows)
    allowed = joint_allowed(token_condition, covered)
    score_scale = inputs.score_scale()
    text, spans = len(token_condition), len(token_condition) + covered.shape[1]
    sees = torch.cat([token_condition == 0, torch.ones(covered.shape[1], dtype=torch.bool)])
    generator = torch.Generator().manual_seed(conditions)
    q, k, v = (torch.randn(rows, spans, 3, 16, generator=generator, dtype=torch.float64) for _ in range(3))
    want = reference_joint_attention(q, k, v, allowed, score_scale)
    want_base = reference_joint_attention(q, k, v, sees[None, :].expand(spans, -1))[:, text:]
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 2e-5), (torch.bfloat16, 5e-2)):
        out, base = backend.joint_attend(q.to(dtype), k.to(dtype), v.to(dtype), mask, True)
        assert out.dtype == dtype and base is not None and torch.isfinite(out).all() and torch.isfinite(base).all()
        torch.testing.assert_close(out.double(), want, rtol=tolerance, atol=tolerance)
        torch.testing.assert_close(base.double(), want_base, rtol=tolerance, atol=tolerance)
    out, base = backend.joint_attend(q, k, v, mask, False)
    assert base is None


def test_packed_kernel_gets_every_allowed_pair_once_and_no_other(monkeypatch: pytest.MonkeyPatch) -> None:
    """A spy on the varlen kernel: the (query, key) pairs of its sequences are exactly the joint mask's
    allowed pairs (an image row's, across its partials; each once), and fewer than the dense call's."""
    from render_service.engine.backends import packed

    token_condition, covered = random_job(12, pixels=40, seed=4)
    rows, text = 2, len(token_condition)
    spans = text + covered.shape[1]
    mask = packed.packed_joint_mask(token_condition, covered, torch.rand(text) + 1, rows)
    sequences: list[tuple[int, int, int, int]] = []
    kernel = packed.packed_attention

    def spy(q: Any, k: Any, v: Any, cu_q: Any, cu_k: Any, max_q: int, max_k: int) -> Any:
        starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
        sequences.extend(zip(starts_q, starts_q[1:], starts_k, starts_k[1:], strict=False))
        return kernel(q, k, v, cu_q, cu_k, max_q, max_k)

    monkeypatch.setattr(packed, "packed_attention", spy)
    q, k, v = (torch.randn(rows, spans, 2, 8) for _ in range(3))
    packed.packed_joint_attend(q, k, v, mask, True)
    # Every packed key is a token of the same image (the scaled copy of a text token maps back to it).
    scaled = rows * spans
    copy = mask.key_index - scaled
    key_token = torch.where(copy < 0, mask.key_index, copy // text * spans + copy % text)
    assert torch.equal(key_token, mask.value_index), "a key and its value are the same token"
    pairs: list[tuple[int, int]] = []
    for q0, q1, k0, k1 in sequences:
        for query in mask.query_index[q0:q1].tolist():
            pairs.extend((query, key) for key in mask.value_index[k0:k1].tolist())
    assert len(pairs) == len(set(pairs)), "no pair is computed twice"
    allowed = joint_allowed(token_condition, covered)
    expected = {(row * spans + i, row * spans + j) for row in range(rows) for i, j in allowed.nonzero().tolist()}
    assert set(pairs) == expected
    assert len(pairs) < rows * spans * spans / 2, "well under the dense call's pairs"


@pytest.mark.parametrize("attention", JOINT)
def test_masked_pairs_never_mix(pipe: Any, attention: str) -> None:
    """Changing region 2's text changes nothing the mask keeps from it in one attention call."""
    from render_service.engine.flux_regional import FluxRegionalAttnProcessor

    attn, args, inputs = attention_case(pipe, "double", torch.float32, attention=attention)
    processor = FluxRegionalAttnProcessor("double", 0)
    image, text = processor(attn, **args, regional=inputs)
    changed = args["encoder_hidden_states"].clone()
    changed[:, 8:] += 5.0  # region 2's tokens
    image2, text2 = processor(attn, **{**args, "encoder_hidden_states": changed}, regional=inputs)
    covered = token_coverage(layout_canvas(Canvas.model_validate(CANVAS)), SIZE, SIZE)
    outside = ~covered[2]
    assert outside.any() and covered[2].any()
    torch.testing.assert_close(image2[0, outside], image[0, outside], rtol=0, atol=1e-6)
    torch.testing.assert_close(text2[0, :8], text[0, :8], rtol=0, atol=1e-6)
    assert not torch.allclose(image2[0, covered[2]], image[0, covered[2]]), "region 2's pixels do see it"


def test_knobs_choose_steps_and_blocks_and_the_kernel_gets_the_mask(pipe: Any) -> None:
    """A spy on every processor's kernel over a whole render: the mask only where the knobs say."""
    install_flux_regional_processors(pipe.transformer)
    seen: list[tuple[str, FluxRegionalInputs, torch.Tensor, bool]] = []
    for name, processor in pipe.transformer.attn_processors.items():
        kernel = processor.attend
        processor.attend = lambda r, q, k, v, b, name=name, kernel=kernel: (
            seen.append((name, r, q, b)) or kernel(r, q, k, v, b)
        )
    layout = layout_canvas(Canvas.model_validate(CANVAS))
    output = render_regional_flux(
        pipe, layout, height=SIZE, width=SIZE, max_sequence_length=TEXT, num_inference_steps=3,
        options=FluxRegionalOptions(regional_steps=1, double_interval=2, single_interval=2, base_ratio=0.2),
        generator=torch.Generator().manual_seed(3), output_type="np",
    )  # fmt: skip
    install_flux_regional_processors(pipe.transformer)  # fresh kernels for the other tests
    assert np.isfinite(output.images[0]).all()
    # 3 steps, 2 double + 2 single blocks; only step 0 and blocks 0 of each kind, one call each.
    names = [name for name, _, _, _ in seen]
    assert names == ["transformer_blocks.0.attn.processor", "single_transformer_blocks.0.attn.processor"]
    covered = token_coverage(layout, SIZE, SIZE)
    for _, regional, query, base in seen:
        assert regional.backend.name == "packed" and base, "Flux's default backend, base pass on"
        assert torch.equal(regional.covered, covered) and regional.text_length == 3 * TEXT
        assert query.shape[1] == 3 * TEXT + covered.shape[1]
        mask = regional.mask(query.device, query.shape[0])
        assert mask.slots == int(covered.sum(dim=0).max()) + 1, "packed: no dense mask was made"


def test_global_only_canvas_equals_stock_flux_pipeline(pipe: Any) -> None:
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    canvas = {"global_description": {"description": "A red apple on a table.", "HTML_web_color_name": "red",
                                     "detailed_descriptions": ["Wooden table."], "tags": "apple"}}  # fmt: skip
    ours = render(pipe, canvas)
    pipe.transformer.set_attn_processor(FluxAttnProcessor())
    prompt = condition_prompt(layout_canvas(Canvas.model_validate(canvas)).conditions[0])
    stock = pipe(
        prompt, height=SIZE, width=SIZE, max_sequence_length=TEXT, num_inference_steps=2,
        generator=torch.Generator().manual_seed(3), output_type="np",
    ).images[0]  # fmt: skip
    assert np.abs(np.round(ours * 255) - np.round(np.asarray(stock) * 255)).max() <= 1
    assert ours.std() > 0


def test_regions_change_the_picture(pipe: Any) -> None:
    plain = render(pipe, CANVAS, regional_steps=0)
    regional = render(pipe, CANVAS)
    assert np.abs(plain - regional).max() > 1 / 255


def test_packed_render_equals_the_dense_render(pipe: Any) -> None:
    packed = render(pipe, CANVAS, attention="packed")
    dense = render(pipe, CANVAS, attention="sdpa")
    assert np.abs(np.round(packed * 255) - np.round(dense * 255)).max() <= 1


@pytest.mark.parametrize("attention", JOINT)
def test_bf16_stays_finite(tiny_flux: Path, attention: str) -> None:
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(tiny_flux), dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    image = render(pipe, CANVAS, attention=attention)
    assert np.isfinite(image).all() and image.std() > 0


def test_what_it_cannot_do_yet_is_refused_clearly(pipe: Any) -> None:
    layout = layout_canvas(Canvas.model_validate(CANVAS))
    with pytest.raises(ValueError, match="multiples of 16; got 72x64"):
        render_regional_flux(pipe, layout, height=64, width=72)
    with pytest.raises(ValueError, match="true CFG"):
        render_regional_flux(pipe, layout, height=64, width=64, negative_prompt="blurry", true_cfg_scale=4.0)
    with pytest.raises(ValueError, match="base_ratio must be in"):
        FluxRegionalOptions(base_ratio=1.5)
