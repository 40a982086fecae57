"""Regional attention: the pure function against the formula, and the processors on real diffusers layers
with each registered attention backend."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from render_service.engine.attention import (
    GroupInputs,
    RegionalCrossAttnProcessor,
    RegionalJob,
    layer_size,
    mark_token_dims_dynamic,
    unet_level,
)
from render_service.engine.backends import attention_backend, dense_backend
from render_service.engine.backends.common import fold_token_scale, pad_tokens, token_bucket
from render_service.engine.backends.flex import FLEX_BLOCK, FlexMask, flex_attend, flex_mask
from render_service.engine.backends.sdpa import additive_mask, regional_attention
from shared.contract import GRID
from shared.layout import Condition


def formula(q, k, v, mask, token_scale, scale=None):
    """softmax(q·kᵀ · scale · token_scale, masked → -inf) · v, in float64, built the slow way."""
    q, k, v = q.double(), k.double(), v.double()
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-1, -2) * scale
    factor = token_scale.double()
    scores = scores * (factor[None, None, None, :] if factor.dim() == 1 else factor[:, None, None, :])
    allowed = mask[None, None] if mask.dim() == 2 else mask[:, None]
    scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(dim=-1) @ v


def region_masks(generator: torch.Generator, height: int, width: int, sizes: list[int]) -> tuple[torch.Tensor, ...]:
    """A token mask (N, T) and token scale (T,) for random rectangular regions.

    Region 0 is global (covers everything), region 1 covers nothing (a region that vanished), the
    rest are random rectangles; each region owns ``sizes[i]`` consecutive tokens.
    """
    covers = []
    for index in range(len(sizes)):
        grid = torch.zeros(height, width, dtype=torch.bool)
        if index == 0:
            grid[:] = True
        elif index > 1:
            top = int(torch.randint(0, height - 1, (1,), generator=generator))
            left = int(torch.randint(0, width - 1, (1,), generator=generator))
            bottom = int(torch.randint(top + 1, height + 1, (1,), generator=generator))
            right = int(torch.randint(left + 1, width + 1, (1,), generator=generator))
            grid[top:bottom, left:right] = True
        covers.append(grid.flatten())
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    covered = torch.stack(covers)  # (R, N)
    pixels = covered.sum(1).float()
    scale = torch.where(pixels > 0, covered.shape[1] / pixels.clamp(min=1), torch.ones_like(pixels))
    return covered[owner].T.contiguous(), scale[owner]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("per_batch", [False, True])
def test_matches_formula(dtype: torch.dtype, per_batch: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    batch, heads, height, width, dim = 3, 2, 6, 5, 16
    sizes = [7, 5, 9, 4]
    tokens = sum(sizes)
    q = torch.randn(batch, heads, height * width, dim, generator=gen)
    k = torch.randn(batch, heads, tokens, dim, generator=gen)
    v = torch.randn(batch, heads, tokens, dim, generator=gen)
    if per_batch:
        parts = [region_masks(gen, height, width, sizes) for _ in range(batch)]
        mask = torch.stack([m for m, _ in parts])
        token_scale = torch.stack([s for _, s in parts])
    else:
        mask, token_scale = region_masks(gen, height, width, sizes)
    assert (~mask[..., 7:12]).all(), "the vanished region's tokens must be masked everywhere"
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)

    got = regional_attention(q, k, v, mask, token_scale)
    want = formula(q, k, v, mask, token_scale)
    assert got.dtype == dtype and got.shape == (batch, heads, height * width, dim)
    assert torch.isfinite(got).all()
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(got.double(), want, rtol=tolerance, atol=tolerance)


def test_explicit_scale_matches_formula() -> None:
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 12, 8, generator=gen) for _ in range(3))
    mask, token_scale = region_masks(gen, 3, 4, [4, 2, 6])
    mask = mask[:, : k.shape[2]]
    got = regional_attention(q, k, v, mask, token_scale, scale=0.3)
    torch.testing.assert_close(got.double(), formula(q, k, v, mask, token_scale, scale=0.3), rtol=1e-5, atol=1e-5)


def test_uses_one_sdpa_call(monkeypatch: pytest.MonkeyPatch) -> None:
    # A spy, not a mock: the real SDPA still runs; we only count that it is the single kernel call.
    calls = []
    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 20, 8, generator=gen) for _ in range(3))
    mask, token_scale = region_masks(gen, 4, 5, [10, 4, 6])
    regional_attention(q, k, v, mask, token_scale)
    assert len(calls) == 1 and calls[0].dtype == torch.bool


def test_weight_on_tokens_of_non_covering_regions_is_exactly_zero() -> None:
    gen = torch.Generator().manual_seed(3)
    sizes = [5, 3, 6, 4]
    tokens = sum(sizes)
    mask, token_scale = region_masks(gen, 7, 6, sizes)
    q = torch.randn(2, 2, 42, 16, generator=gen) * 4  # sharp scores: no help from underflow
    k = torch.randn(2, 2, tokens, 16, generator=gen) * 4
    # With the identity as values, the output *is* the attention weight matrix.
    v = torch.eye(tokens).expand(2, 2, tokens, tokens)
    weights = regional_attention(q, k, v, mask, token_scale)
    blocked = ~mask.expand_as(weights)
    assert (weights[blocked] == 0).all()
    assert (weights[~blocked] > 0).any()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 42))


def test_rejects_bad_shapes() -> None:
    q = k = v = torch.zeros(1, 1, 4, 2)
    with pytest.raises(ValueError):
        regional_attention(q, k, v, torch.ones(4, 4, dtype=torch.bool), torch.ones(1, 1, 4))
    with pytest.raises(TypeError):
        regional_attention(q, k, v, torch.ones(4, 4), torch.ones(4))


# ---------------------------------------------------------------- processors on a real diffusers layer


def make_job(rects: list[tuple[int, int, int, int]], tokens_per_condition: int, rows: list[int]) -> RegionalJob:
    """Conditions: the negative prompt (all ones, kind 0), then one per rect (kind 1)."""
    grids = [torch.ones(GRID, GRID)]
    for top, bottom, left, right in rects:
        grid = torch.zeros(GRID, GRID)
        grid[top:bottom, left:right] = 1
        grids.append(grid)
    count = len(grids)
    return RegionalJob(
        token_condition=torch.arange(count).repeat_interleave(tokens_per_condition),
        condition_grids=torch.stack(grids),
        condition_kind=torch.tensor([0] + [1] * (count - 1)),
        row_kind=torch.tensor(rows),
    )


@pytest.fixture
def layer() -> Attention:
    torch.manual_seed(0)
    return Attention(query_dim=32, cross_attention_dim=24, heads=2, dim_head=16)


def run_layer(
    layer: Attention, job: RegionalJob | None, size: tuple[int, int], hidden: torch.Tensor, context: torch.Tensor
) -> torch.Tensor:
    """One call of ``layer`` with our processor, the job's inputs made as the engine makes them."""
    name = "test.attn2.processor"
    layer.set_processor(RegionalCrossAttnProcessor(name))
    with torch.no_grad():
        if job is None:
            return layer(hidden, encoder_hidden_states=context)
        regional = {name: job.layer_inputs(layer, context[:1], size, hidden.dtype)}
        return layer(hidden, encoder_hidden_states=context, regional=regional)


def test_processor_keeps_regions_apart(layer: Attention) -> None:
    left_half = (0, GRID, 0, GRID // 2)
    job = make_job([(0, GRID, 0, GRID), left_half], tokens_per_condition=4, rows=[0, 1])
    gen = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 64, 32, generator=gen)
    context = torch.randn(1, 12, 24, generator=gen).expand(2, -1, -1)
    before = run_layer(layer, job, (8, 8), hidden, context)

    # Change only the left region's tokens.
    changed = context.clone()
    changed[:, 8:12] += 3.0
    after = run_layer(layer, job, (8, 8), hidden, changed)

    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True
    left = left.flatten()
    assert torch.equal(after[0], before[0]), "the negative row never sees positive tokens"
    assert torch.equal(after[1][~left], before[1][~left]), "pixels outside the region ignore its tokens"
    assert not torch.allclose(after[1][left], before[1][left])


def test_processor_without_job_is_stock(layer: Attention) -> None:
    gen = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 16, 32, generator=gen)
    context = torch.randn(2, 7, 24, generator=gen)
    ours = run_layer(layer, None, (4, 4), hidden, context)
    layer.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = layer(hidden, encoder_hidden_states=context)
    assert torch.equal(ours, stock)


def test_processor_with_one_region_everywhere_equals_plain_attention(layer: Attention) -> None:
    # A global-only canvas with no negative row is exactly ordinary cross-attention: the bucket's
    # padding tokens are masked and change nothing.
    job = make_job([(0, GRID, 0, GRID)], tokens_per_condition=5, rows=[1])
    gen = torch.Generator().manual_seed(6)
    hidden = torch.randn(1, 24, 32, generator=gen)
    context = torch.randn(1, 10, 24, generator=gen)
    ours = run_layer(layer, job, (4, 6), hidden, context)
    layer.set_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = layer(hidden, encoder_hidden_states=context[:, 5:])
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-5)


def test_vanishing_region_gives_no_nan(layer: Attention) -> None:
    tiny_region = (44, 46, 44, 46)  # 2x2 cells of 90: gone at 4x4, present at 64x64
    job = make_job([(0, GRID, 0, GRID), tiny_region], tokens_per_condition=3, rows=[0, 1])
    gen = torch.Generator().manual_seed(7)
    context = torch.randn(1, 9, 24, generator=gen).expand(2, -1, -1)
    for size in [(4, 4), (2, 2), (64, 64)]:
        hidden = torch.randn(2, size[0] * size[1], 32, generator=gen)
        out = run_layer(layer, job, size, hidden, context)
        assert torch.isfinite(out).all(), size
    mask, scale = job.masks_at(4, 4, torch.device("cpu"))
    assert not mask[:, :, 6:].any() and torch.isfinite(scale).all()
    _, scale = job.masks_at(64, 64, torch.device("cpu"))
    assert scale[6] > 100  # a small region gets a large factor where it exists


def test_layer_inputs_pad_the_masked_group_to_a_bucket(layer: Attention) -> None:
    job = make_job([(0, GRID, 0, GRID), (0, 45, 0, 45)], tokens_per_condition=77, rows=[0, 0, 1, 1])
    context = torch.randn(1, 3 * 77, 24)
    negative, positive = job.layer_inputs(layer, context, (8, 8), torch.float32)
    assert (negative.start, negative.stop) == (0, 2) and negative.key.shape[2] == 77, "negative: its own tokens"
    assert negative.mask is None and negative.backend is dense_backend(), "negative: stock"
    start, stop, key, value, bias, backend = positive
    assert (start, stop) == (2, 4) and key.shape[2] == value.shape[2] == bias.shape[3] == 256
    assert torch.isinf(bias[..., 154:]).all() and not key[:, :, 154:].any(), "padding is masked and zero"
    assert backend is attention_backend("sdpa"), "the default backend"
    job.bucket_tokens = False  # eager: only aligned to 16
    job.mask_cache.clear()
    assert job.layer_inputs(layer, context, (8, 8), torch.float32)[1].mask.shape[3] == 160


def assert_same_as_sdpa(layer: Attention, rows: list[int], backend: str, mask_type: type) -> None:
    """The job through attention ``backend`` (``flex``, ``packed``) gives the SDPA path's output on ``layer``,
    for the given rows, at sizes that are not multiples of a block, with a region that vanishes at
    the coarse size."""
    rects = [(0, GRID, 0, GRID), (0, 45, 0, 30), (30, 90, 50, 90), (44, 46, 44, 46)]
    gen = torch.Generator().manual_seed(8)
    context = torch.randn(1, 5 * 9, 24, generator=gen).expand(len(rows), -1, -1)
    for size in [(16, 24), (4, 4)]:
        hidden = torch.randn(len(rows), size[0] * size[1], 32, generator=gen)
        sdpa = run_layer(layer, make_job(rects, 9, rows), size, hidden, context)
        job = make_job(rects, 9, rows)
        job.backend = attention_backend(backend)
        ours = run_layer(layer, job, size, hidden, context)
        assert isinstance(job.layer_inputs(layer, context[:1], size, torch.float32)[-1].mask, mask_type)
        torch.testing.assert_close(ours, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows", [[0, 1], [0, 0, 1, 1]])
def test_flex_path_equals_the_sdpa_path(layer: Attention, rows: list[int]) -> None:
    """FlexAttention with a block mask (``set_attention("flex")``) computes what the SDPA bias
    does, for one and two images (rows folded into one query sequence)."""
    assert_same_as_sdpa(layer, rows, "flex", FlexMask)


def test_flex_block_mask_skips_blocks_no_pixel_sees(layer: Attention) -> None:
    # Two quarter regions of 128 tokens each at 32x32 (8 query blocks of 4 pixel rows): a region's
    # token block is computed only for the query blocks of its pixel rows.
    job = make_job([(0, GRID, 0, GRID), (0, 45, 0, 45), (45, 90, 45, 90)], tokens_per_condition=FLEX_BLOCK, rows=[1])
    job.backend = attention_backend("flex")
    context = torch.randn(1, 4 * FLEX_BLOCK, 24)  # the negative prompt, the global one, two regions
    mask = job.layer_inputs(layer, context, (32, 32), torch.float32)[0].mask
    assert isinstance(mask, FlexMask)
    computed = int(mask.kv_num_blocks.sum() + mask.full_kv_num_blocks.sum())
    assert int(mask.full_kv_num_blocks.sum()) == 8, "the global prompt's block is full for every query block"
    assert computed == 8 + 4 + 4, "each region's block only where its rows are, the padding never"


def test_token_buckets_are_few_and_cover_every_count() -> None:
    buckets = {token_bucket(77 * bags) for bags in range(1, 80)}
    assert buckets == {256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144}
    assert all(token_bucket(n) >= n for n in range(1, 7000, 13))
    assert token_bucket(2849) == 3072  # 12 Omost regions: 8 % padding


def test_additive_mask_is_branch_free() -> None:
    # No data-dependent None: an all-True mask still gives a (zero) bias, so the compiled graph
    # is the same for every canvas.
    bias = additive_mask(torch.ones(1, 1, 4, 3, dtype=torch.bool), torch.float16, tokens=8)
    assert bias.shape == (1, 1, 4, 8) and not bias[..., :3].any() and torch.isinf(bias[..., 3:]).all()


@pytest.mark.parametrize("size", [(8, 8), (13, 7), (45, 90), (128, 96)])
def test_masks_agree_with_shared_layout(size: tuple[int, int]) -> None:
    rects = [(0, GRID, 0, GRID), (9, 54, 5, 50), (30, 90, 60, 90), (0, 3, 88, 90)]
    job = make_job(rects, tokens_per_condition=1, rows=[1])
    mask, _ = job.masks_at(*size, device=torch.device("cpu"))
    for index, rect in enumerate(rects, start=1):
        condition = Condition(rect, (), (), (0, 0, 0), None, None)
        want = torch.from_numpy(condition.mask(*size)).flatten() > 0.5
        assert torch.equal(mask[0, :, index], want), (size, rect)


def test_layer_sizes_follow_unet_downsampling() -> None:
    assert layer_size((13, 9), 0) == (13, 9)
    assert layer_size((13, 9), 1) == (7, 5)
    assert layer_size((13, 9), 2) == (4, 3)
    assert [unet_level(n, 3) for n in ("down_blocks.1.attentions.0.transformer_blocks.0.attn2",
                                       "mid_block.attentions.0.transformer_blocks.0.attn2",
                                       "up_blocks.0.attentions.2.transformer_blocks.9.attn2")] == [1, 2, 2]  # fmt: skip
    with pytest.raises(ValueError):
        unet_level("encoder.attn2", 3)


def test_inductor_compiles_flex_attention_once_for_every_bucket() -> None:
    """The real compiler (inductor, CPU kernel) on :func:`flex_attend` with the token dimensions
    marked dynamic as the engine marks them: one graph for canvases in two buckets with different
    condition counts, each equal to the formula. (About 30 s: one small kernel.)"""
    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = torch.compile(flex_attend, fullgraph=True)
    gen = torch.Generator().manual_seed(9)
    rows, heads, pixels, dim = 1, 2, 16 * 16, 16
    for conditions, per_condition, bucket in ((3, 40, 256), (6, 60, 384)):
        covered = torch.rand(conditions, pixels, generator=gen) > 0.5
        covered[0] = True
        condition = torch.arange(conditions).repeat_interleave(per_condition)
        q = torch.randn(rows, heads, pixels, dim, generator=gen)
        k, v = (torch.randn(1, heads, len(condition), dim, generator=gen) for _ in range(2))
        token_scale = (torch.rand(conditions, generator=gen) * 4 + 1)[condition]
        mask = flex_mask(covered, condition, rows, bucket)
        key = pad_tokens(fold_token_scale(k, token_scale, 1 / math.sqrt(dim)), bucket)
        value = pad_tokens(v, bucket)
        mark_token_dims_dynamic({"layer": (GroupInputs(0, rows, key, value, mask, attention_backend("flex")),)})
        with torch.inference_mode():
            out = compiled(q, key, value, mask)
        expected = formula(q, k, v, covered[condition].T, token_scale)
        torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before == 1
    torch._dynamo.reset()
