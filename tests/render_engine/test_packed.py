"""Packed regional attention (``set_attention("packed")``): one variable-length sequence per
condition, partial results merged by log-sum-exp. It must compute what the masked SDPA path does."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from render_service.engine import RenderEngine, RenderResult
from render_service.engine.backends.common import fold_token_scale
from render_service.engine.backends.packed import (
    PackedMask,
    packed_attend,
    packed_attention,
    packed_kernel,
    packed_key_scale,
    packed_mask,
)
from render_service.engine.batching import RenderTask
from render_service.settings import RenderSettings
from tests.render_engine.test_attention import assert_same_as_sdpa, formula, region_masks
from tests.render_engine.test_compile import MANY_REGIONS, counting_compile, graph_calls
from tests.render_engine.test_render import CANVAS, pixels, request


def attend_packed(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, covered: torch.Tensor, owner: torch.Tensor, scale
) -> torch.Tensor:
    """``regional_attention``'s signature on the packed path: query (R, H, N, d), key and value
    (1, H, T, d), ``covered`` (C, N), ``owner`` (T,) each token's condition, ``scale`` (T,)."""
    dim = query.shape[-1]
    folded = fold_token_scale(key, scale, packed_key_scale(1 / math.sqrt(dim), dim))[0].transpose(0, 1)
    mask = packed_mask(covered, owner, query.shape[0])
    out = packed_attend(query.transpose(1, 2), folded.contiguous(), value[0].transpose(0, 1).contiguous(), mask)
    return out.transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3])
def test_matches_formula(dtype: torch.dtype, rows: int) -> None:
    """Against softmax over the allowed tokens in float64: a global condition, one that vanished,
    random rectangles (so pixels are covered by 1 to 5 conditions), uneven token counts."""
    gen = torch.Generator().manual_seed(1)
    height, width, heads, dim = 6, 10, 2, 16
    sizes = [7, 3, 5, 9, 4, 6]
    token_mask, token_scale = region_masks(gen, height, width, sizes)
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    covered = torch.stack([token_mask[:, owner == c].any(dim=1) for c in range(len(sizes))])
    q = torch.randn(rows, heads, height * width, dim, generator=gen).to(dtype)
    k = torch.randn(1, heads, len(owner), dim, generator=gen).to(dtype)
    v = torch.randn(1, heads, len(owner), dim, generator=gen).to(dtype)
    ours = attend_packed(q, k, v, covered, owner, token_scale)
    expected = formula(q, k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), token_mask, token_scale)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ours.double(), expected, rtol=tolerance, atol=tolerance)
    assert ours.dtype == dtype


def test_mask_lays_out_one_sequence_per_condition() -> None:
    covered = torch.zeros(4, 6, dtype=torch.bool)
    covered[0] = True  # global
    covered[1, :3] = True
    covered[3, 2:] = True  # condition 2 covers nothing (vanished)
    owner = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    mask = packed_mask(covered, owner, rows=2)
    assert mask.cu_seq_q.tolist() == [0, 12, 18, 18, 26], "rows x covered pixels per condition"
    assert mask.cu_seq_k.tolist() == [0, 2, 5, 6, 8], "each condition's own tokens"
    assert mask.cu_seq_q.dtype == mask.cu_seq_k.dtype == torch.int32, "FlashAttention's index type"
    assert mask.gather[12:18].tolist() == [0, 1, 2, 6, 7, 8], "condition 1: its pixels in row 0, then row 1"
    assert len(mask.slots) == 3, "pixel 2 is covered by three conditions"
    assert len(set(mask.slot.tolist())) == len(mask.slot), "every partial result has a place of its own"
    assert (mask.slot % 12 == mask.gather).all(), "a slot keeps its place"


def test_a_single_condition_still_has_two_sequences_and_two_slots() -> None:
    """A compiled graph specialises dimensions of size 1: a global-only canvas would otherwise be a
    graph of its own, compiled on a user's job."""
    mask = packed_mask(torch.ones(1, 6, dtype=torch.bool), torch.zeros(4, dtype=torch.long), rows=1)
    assert mask.cu_seq_q.tolist() == [0, 6, 6] and mask.cu_seq_k.tolist() == [0, 4, 4]
    assert len(mask.slots) == 2
    query, key, value = torch.randn(1, 6, 2, 8), torch.randn(4, 2, 8), torch.randn(4, 2, 8)
    plain = torch.softmax(torch.einsum("nhd,thd->hnt", query[0], key) / math.sqrt(8), dim=-1)
    expected = torch.einsum("hnt,thd->nhd", plain, value)
    torch.testing.assert_close(packed_attend(query, key, value, mask)[0], expected, rtol=1e-5, atol=1e-5)


def test_condition_tokens_must_be_contiguous() -> None:
    covered = torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="contiguous"):
        packed_mask(covered, torch.tensor([0, 1, 0]), rows=1)


def test_computes_no_masked_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel sees each condition's covered pixels against its own tokens, nothing else."""
    seen: list[tuple[int, int]] = []
    covered = torch.zeros(3, 16, dtype=torch.bool)
    covered[0] = True
    covered[1, :4] = True
    covered[2, 8:] = True
    owner = torch.tensor([0] * 5 + [1] * 6 + [2] * 7)
    mask = packed_mask(covered, owner, rows=1)
    query = torch.randn(1, 16, 2, 8)
    key, value = torch.randn(18, 2, 8), torch.randn(18, 2, 8)
    real = packed_attention

    def spy(q, k, v, cu_q, cu_k, max_q, max_k):
        seen.extend(zip(torch.diff(cu_q).tolist(), torch.diff(cu_k).tolist(), strict=True))
        return real(q, k, v, cu_q, cu_k, max_q, max_k)

    monkeypatch.setattr("render_service.engine.backends.packed.packed_attention", spy)
    packed_attend(query, key, value, mask)
    assert seen == [(16, 5), (4, 6), (8, 7)]
    assert sum(q * k for q, k in seen) == 16 * 5 + 4 * 6 + 8 * 7 < 16 * 18, "fewer pairs than the dense call"


@pytest.fixture
def layer() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)


@pytest.mark.parametrize("rows", [[0, 1], [0, 0, 1, 1], [1]])
def test_processor_equals_the_sdpa_path(layer: Attention, rows: list[int]) -> None:
    """On a real diffusers layer, with and without CFG rows, one and two images."""
    assert_same_as_sdpa(layer, rows, "packed", PackedMask)


def test_kernel_choice() -> None:
    assert packed_kernel("cpu", torch.float16) == "flash-cpu", "PyTorch's fused CPU kernel with its log-sum-exp"
    assert packed_kernel("cuda", torch.float32) == "reference", "FlashAttention has no fp32 kernel"
    flash_available = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    assert packed_kernel("cuda", torch.float16) == ("flash-varlen" if flash_available else "reference")


# ------------------------------------------------------------------------------------- whole renders


def same_images(ours: RenderResult | Exception, theirs: RenderResult | Exception) -> None:
    assert isinstance(ours, RenderResult) and isinstance(theirs, RenderResult)
    for a, b in zip(pixels(ours), pixels(theirs), strict=True):
        gap = np.abs(a.astype(int) - b.astype(int))
        assert gap.max() <= 1, gap.max()


@pytest.fixture
def packed_engine(engine: RenderEngine):
    engine.set_attention("packed")
    yield engine
    engine.set_attention("sdpa")


@pytest.mark.parametrize(
    "overrides",
    [{"num_images": 2}, {"canvas": MANY_REGIONS, "width": 96}, {"guidance_scale": 1.0}],
    ids=["two-images", "many-regions", "no-cfg"],
)
def test_render_equals_the_sdpa_path(packed_engine: RenderEngine, overrides: dict) -> None:
    req = request(steps=2, **overrides)
    packed = packed_engine.render(req)
    packed_engine.set_attention("sdpa")
    same_images(packed, packed_engine.render(req))


def test_batch_equals_the_sdpa_path(packed_engine: RenderEngine) -> None:
    """Same-shape batching stacks packed groups like any masked group: each job keeps its own."""
    jobs = [request(steps=2, seed=1), request(canvas=MANY_REGIONS, steps=2, seed=2, num_images=2)]
    packed = packed_engine.render_batch([RenderTask(job) for job in jobs])
    packed_engine.set_attention("sdpa")
    for ours, job in zip(packed, jobs, strict=True):
        same_images(ours, packed_engine.render(job))


def test_compiled_packed_unet_is_one_graph_for_every_canvas(engine: RenderEngine, tiny_model: Path) -> None:
    """``fullgraph=True``: no graph break, one graph for canvases with different token, condition
    and slot counts (a global-only one too), the packed op in it, and the eager SDPA path's images."""
    compiled, graphs = counting_compile(tiny_model, attention="packed")
    global_only = {**CANVAS, "local_descriptions": []}
    for req in (request(steps=1), request(canvas=MANY_REGIONS, steps=1), request(canvas=global_only, steps=1)):
        same_images(compiled.render(req), engine.render(req))
    assert len(graphs) == 1, "one graph for every canvas"
    assert graph_calls(graphs, torch.ops.omost.packed_attention.default) > 0, "regional attention ran packed"
    torch._dynamo.reset()


def test_attention_is_a_setting(engine: RenderEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine.attention == "sdpa"
    assert engine._regions(engine._prepare(request()).encoded, 1, True).backend.name == "sdpa"
    with pytest.raises(ValueError, match="sdpa, packed, flex"):
        engine.set_attention("dense")
    monkeypatch.setenv("OMOST_RENDER_ATTENTION", "packed")
    assert RenderSettings().attention == "packed"
    monkeypatch.setenv("OMOST_RENDER_ATTENTION", "dense")
    with pytest.raises(ValueError, match="sdpa"):
        RenderSettings()
