"""Omost's regional attention ("attention score manipulation") as one SDPA call.

In every cross-attention of the UNet, pixel p may attend only to the text tokens of regions whose
mask covers p, and each token's score is multiplied by (pixels / pixels of its region), so small
regions are not drowned by the global prompt. Omost builds the score matrix by hand for this; here
the per-token factor is folded into the keys instead -- (q · (s_t k_t)) = s_t (q · k_t) -- so the
whole thing is a single ``scaled_dot_product_attention`` call with a boolean mask, and PyTorch is
free to pick a fused kernel.

Everything a job contributes reaches the processors as tensors passed through the UNet call
(``cross_attention_kwargs={"regional": ...}``, diffusers' own channel to processors), never as
Python state the processors read: text key/value projections and additive masks are made once per
job and pass (:meth:`RegionalJob.unet_inputs`), and the processors only slice, expand and call
SDPA. That is what lets ``torch.compile`` trace the UNet in one graph with no data-dependent
branch, and reuse that graph for any canvas (token counts are padded to a few buckets and marked
dynamic). Nothing in diffusers is patched.

The SDPA call pays for every (pixel, token) pair, masked or not; :mod:`render_service.engine.packed`
computes only the allowed pairs instead (``RegionalJob.packed``), with the same keys and inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from render_service.engine.packed import PackedMask, packed_attend, packed_key_scale, packed_mask

try:  # the processors need diffusers; the pure maths below does not.
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
except ImportError:  # pragma: no cover - diffusers is a render extra
    Attention = Any  # type: ignore[misc,assignment]
    AttnProcessor2_0 = None  # type: ignore[misc,assignment]

__all__ = [
    "FlexMask",
    "RegionalCrossAttnProcessor",
    "RegionalJob",
    "RegionalSelfAttnProcessor",
    "additive_mask",
    "attend",
    "flex_attend",
    "flex_mask",
    "fold_token_scale",
    "install_regional_processors",
    "layer_size",
    "regional_attention",
    "stack_jobs",
    "token_bucket",
]


def fold_token_scale(key: torch.Tensor, token_scale: torch.Tensor, scale: float) -> torch.Tensor:
    """``key · token_scale · scale`` per token: q·(s k) = s (q·k), so the factor rides in the keys.

    The softmax scale goes in too (SDPA then runs with scale=1): the product is formed in fp32 and
    rounded once, and fp16 keys keep 1/sqrt(d) more headroom before overflowing.
    """
    if token_scale.dim() == 1:
        factor = token_scale[None, None, :, None]
    elif token_scale.dim() == 2:
        factor = token_scale[:, None, :, None]
    else:
        raise ValueError(f"token_scale must be (T,) or (B, T); got {tuple(token_scale.shape)}")
    return (key.float() * (factor.float() * scale)).to(key.dtype)


def attend(
    query: torch.Tensor, folded_key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None
) -> torch.Tensor:
    """The one SDPA call: keys already carry every score factor; the mask is SDPA's (bool or additive)."""
    return F.scaled_dot_product_attention(query, folded_key, value, attn_mask=attn_mask, scale=1.0)


def regional_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    token_mask: torch.Tensor,
    token_scale: torch.Tensor,
    scale: float | None = None,
) -> torch.Tensor:
    """``softmax(q·kᵀ · scale · token_scale, masked → -inf) · v`` in one SDPA call.

    query ``(B, heads, N, d)``; key, value ``(B, heads, T, d)``; ``token_mask`` bool ``(N, T)`` or
    ``(B, N, T)``, True where pixel n may attend to token t; ``token_scale`` ``(T,)`` or ``(B, T)``;
    ``scale`` defaults to ``1/sqrt(d)``. A row with no allowed token has no defined result (the
    formula divides by zero); the renderer never makes one because the global prompt covers every
    pixel.
    """
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    if token_mask.dtype != torch.bool:
        raise TypeError(f"token_mask must be bool; got {token_mask.dtype}")
    if token_mask.dim() == 2:
        attn_mask = token_mask[None, None]
    elif token_mask.dim() == 3:
        attn_mask = token_mask[:, None]
    else:
        raise ValueError(f"token_mask must be (N, T) or (B, N, T); got {tuple(token_mask.shape)}")
    return attend(query, fold_token_scale(key, token_scale, scale), value, attn_mask)


MASK_ALIGNMENT = 16
"""Token counts of masked groups are padded to at least this multiple: CUDA's memory-efficient SDPA
kernel wants the mask's last dimension aligned and would otherwise pad (copy) the mask every call."""

TOKEN_BUCKET_BASE = 256


def token_bucket(tokens: int) -> int:
    """The padded length of a masked token group: 256·2^k or 384·2^k, the next one up.

    Padding (masked, so results are unchanged) keeps the number of distinct shapes a compiled UNet
    sees small -- 9 buckets cover 1 to 6,144 tokens, i.e. up to 79 bags -- at a cost of at most a
    third more masked tokens (12 Omost regions: 2,849 positive tokens -> 3,072).
    """
    bucket = TOKEN_BUCKET_BASE
    while True:
        for size in (bucket, bucket * 3 // 2):
            if size >= tokens:
                return size
        bucket *= 2


def additive_mask(token_mask: torch.Tensor, dtype: torch.dtype, tokens: int | None = None) -> torch.Tensor:
    """SDPA's float form of a bool mask (0 where allowed, -inf elsewhere), made once per job.

    Pure tensor ops with no data-dependent branch. ``tokens`` pads the last dimension with masked
    columns to that length (see :func:`token_bucket`).
    """
    count = token_mask.shape[-1]
    padded = count if tokens is None else tokens
    if padded < count:
        raise ValueError(f"cannot pad {count} tokens to {padded}")
    bias = torch.full((*token_mask.shape[:-1], padded), float("-inf"), dtype=dtype, device=token_mask.device)
    bias[..., :count].masked_fill_(token_mask, 0.0)
    return bias


def _pad_tokens(tensor: torch.Tensor, tokens: int) -> torch.Tensor:
    """Zero keys/values for the masked padding columns of :func:`additive_mask`."""
    missing = tokens - tensor.shape[-2]
    return F.pad(tensor, (0, 0, 0, missing)) if missing > 0 else tensor


FLEX_BLOCK = 128
"""FlexAttention's block (queries x tokens): a block no allowed pair falls in is never computed."""


class FlexMask(NamedTuple):
    """A masked group's mask in FlexAttention's form, all tensors (so a compiled UNet takes them as
    inputs and one graph serves every canvas): which pixels each condition covers, each (padded)
    token's condition, and the block tables of :class:`~torch.nn.attention.flex_attention.BlockMask`
    for the group's rows folded into one query sequence (see :func:`flex_attend`)."""

    covered: torch.Tensor
    """(C + 1, N) bool: pixels each condition covers; the last row (padding tokens) covers none."""
    token_condition: torch.Tensor
    """(T_bucket,) long: each token's row of ``covered``."""
    kv_num_blocks: torch.Tensor
    kv_indices: torch.Tensor
    full_kv_num_blocks: torch.Tensor
    full_kv_indices: torch.Tensor


def _flex_mask_mod(covered: torch.Tensor, token_condition: torch.Tensor, pixels: int) -> Callable[..., torch.Tensor]:
    def mask_mod(batch: torch.Tensor, head: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor) -> torch.Tensor:
        return covered[token_condition[kv_idx], q_idx % pixels]

    return mask_mod


def flex_mask(covered: torch.Tensor, token_condition: torch.Tensor, rows: int, tokens: int) -> FlexMask:
    """The :class:`FlexMask` of a group: ``covered`` (C, N) bool, ``token_condition`` (T_k,) its
    tokens' conditions, ``rows`` rows of the UNet batch, keys padded to ``tokens``. Made once per
    job and resolution: the block tables are what lets the kernel skip blocks no pixel may see."""
    from torch.nn.attention.flex_attention import create_block_mask

    count, pixels = covered.shape
    padded = torch.full((tokens,), count, dtype=torch.long, device=covered.device)
    padded[: len(token_condition)] = token_condition
    covered = torch.cat([covered, covered.new_zeros(1, pixels)])
    block = create_block_mask(
        _flex_mask_mod(covered, padded, pixels), None, None, rows * pixels, tokens, device=covered.device,
        BLOCK_SIZE=FLEX_BLOCK,
    )  # fmt: skip
    assert block.full_kv_num_blocks is not None and block.full_kv_indices is not None
    return FlexMask(
        covered, padded, block.kv_num_blocks, block.kv_indices, block.full_kv_num_blocks, block.full_kv_indices
    )


def flex_attend(query: torch.Tensor, folded_key: torch.Tensor, value: torch.Tensor, mask: FlexMask) -> torch.Tensor:
    """:func:`attend` with FlexAttention: query ``(rows, heads, N, d)``, keys and values ``(1, heads,
    T_bucket, d)`` (every row sees the same tokens), the mask as :class:`FlexMask`.

    The rows are folded into one query sequence, so the keys are not expanded and one block mask
    serves them all; the block mask is rebuilt here from tensors (cheap, and traced), so nothing in
    it is a Python object a compiled graph would guard on.
    """
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    rows, heads, pixels, dim = query.shape
    folded = query.transpose(0, 1).reshape(1, heads, rows * pixels, dim)
    block = BlockMask.from_kv_blocks(
        mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks, mask.full_kv_indices, BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=_flex_mask_mod(mask.covered, mask.token_condition, pixels),
        seq_lengths=(rows * pixels, folded_key.shape[-2]),
    )  # fmt: skip
    out = flex_attention(folded, folded_key, value, block_mask=block, scale=1.0)
    assert isinstance(out, torch.Tensor)
    return out.reshape(heads, rows, pixels, dim).transpose(0, 1)


def layer_size(latent_size: tuple[int, int], level: int) -> tuple[int, int]:
    """The (height, width) at UNet level ``level`` of a latent: each downsample is ceil(size / 2)."""
    height, width = latent_size
    for _ in range(level):
        height, width = -(-height // 2), -(-width // 2)
    return height, width


def unet_level(name: str, levels: int) -> int:
    """The resolution level of an attention layer from its module name in a diffusers UNet."""
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return int(parts[1])
    if parts[0] == "mid_block":
        return levels - 1
    if parts[0] == "up_blocks":
        return levels - 1 - int(parts[1])
    raise ValueError(f"cannot tell the resolution of attention layer {name!r}")


GroupMask = torch.Tensor | FlexMask | PackedMask | None
"""How a group's rows see its tokens: an additive SDPA mask ``(1, 1, N, T)``, a :class:`FlexMask`,
a :class:`~render_service.engine.packed.PackedMask`, or None (every pixel sees every token)."""
GroupInputs = tuple[int, int, torch.Tensor, torch.Tensor, GroupMask]
"""One group's share of a cross-attention call: (first row, end row, folded keys, values, mask).
Keys and values are ``(1, heads, T, d)``, or ``(T, heads, d)`` with a :class:`PackedMask`."""
LayerInputs = tuple[GroupInputs, ...]


@dataclass
class _Group:
    """The rows of one kind (negative or positive) and the tokens they may see."""

    rows: slice
    tokens: slice
    conditions: torch.Tensor
    """(T_k,) the condition of each of these tokens."""
    masked: bool
    """False only for the negative prompt's group: one condition that covers every pixel."""


@dataclass
class RegionalJob:
    """The text side of one render job, shared by all cross-attention layers.

    Tokens are ``[negative | positive]`` in one sequence and the UNet batch is ``[negative rows |
    positive rows]``, so CFG stays one batched UNet call. Inside each cross-attention the two halves
    attend separately, each to its own tokens: the negative rows do stock attention over their 77
    tokens and the positive rows do regional attention over the bags. That is the same result as
    padding each half with the other's tokens masked out, without paying for the masked tokens.
    """

    token_condition: torch.Tensor
    """(T,) long: the condition each token belongs to (index into ``condition_grids``)."""
    condition_grids: torch.Tensor
    """(C, 90, 90) float 0/1 masks on Omost's grid; the negative prompt's is all ones."""
    condition_kind: torch.Tensor
    """(C,) long: which row kind (0 negative, 1 positive) may see the condition's tokens."""
    row_kind: torch.Tensor
    """(B,) long: the kind of each row of the UNet batch; rows and tokens of a kind are contiguous."""
    bucket_tokens: bool = True
    """Pad masked token groups to a :func:`token_bucket` (for a compiled UNet) rather than only to
    :data:`MASK_ALIGNMENT` (eager: fewer masked tokens to attend over)."""
    flex: bool = False
    """Masks as :class:`FlexMask` for :func:`flex_attend` (compiled UNets) instead of SDPA biases."""
    packed: bool = False
    """Masks as :class:`PackedMask` for :func:`~render_service.engine.packed.packed_attend`: only
    the allowed (pixel, token) pairs are computed (eager or compiled)."""
    mask_cache: dict[tuple[int, int, torch.dtype], list[tuple[GroupMask, torch.Tensor]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        token_kind = self.condition_kind[self.token_condition]
        groups = []
        for kind in torch.unique_consecutive(self.row_kind).tolist():
            rows = (self.row_kind == kind).nonzero().flatten()
            tokens = (token_kind == kind).nonzero().flatten()
            if len(tokens) == 0:
                raise ValueError(f"rows of kind {kind} have no tokens")
            for index in (rows, tokens):
                if index[-1] - index[0] + 1 != len(index):
                    raise ValueError("rows and tokens of one kind must be contiguous")
            token_slice = slice(int(tokens[0]), int(tokens[-1]) + 1)
            conditions = self.token_condition[token_slice]
            unique = torch.unique(conditions)
            # Decided once per job in Python, never inside the UNet: a group is unmasked only when
            # it is one condition covering everything (the negative prompt), so the positive group's
            # graph is the same for every canvas.
            masked = kind != 0 or len(unique) != 1 or not bool(self.condition_grids[unique[0]].all())
            groups.append(_Group(slice(int(rows[0]), int(rows[-1]) + 1), token_slice, conditions, masked))
        self.groups = groups

    def masks_at(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_mask (B, N, T) bool, token_scale (T,) float32)`` at one attention resolution.

        The whole-batch view of what the processors do group by group (tests and debugging).
        """
        covered, scale = self._coverage(height, width, device)
        token_condition = self.token_condition.to(device)
        token_kind = self.condition_kind.to(device)[token_condition]
        visible = token_kind[None, :] == self.row_kind.to(device)[:, None]
        return covered[token_condition].T[None] & visible[:, None, :], scale[token_condition]

    def _coverage(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Which pixels each condition covers ``(C, N)`` and its score factor ``(C,)`` at one size."""
        grids = self.condition_grids.to(device=device, dtype=torch.float32)
        # nearest-exact from the 90-grid, as shared.layout's Condition.mask(h, w) samples it.
        covered = F.interpolate(grids[None], size=(height, width), mode="nearest-exact")[0] > 0.5
        covered = covered.flatten(1)
        pixels = covered.sum(dim=1).to(torch.float32)
        # A region that vanishes at this resolution covers no pixel, so its tokens are masked
        # everywhere; give them a harmless factor instead of N/0 = inf (inf·0 would be NaN).
        scale = torch.where(pixels > 0, (height * width) / pixels.clamp(min=1), torch.ones_like(pixels))
        return covered, scale

    def group_masks(
        self, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> list[tuple[GroupMask, torch.Tensor]]:
        """Per group: (its :data:`GroupMask`, token scale ``(T_k,)``), cached per size."""
        key = (height, width, dtype)
        cached = self.mask_cache.get(key)
        if cached is None:
            covered, scale = self._coverage(height, width, device)
            cached = []
            for group in self.groups:
                conditions = group.conditions.to(device)
                mask: GroupMask = None
                if group.masked and self.packed:
                    mask = packed_mask(covered, conditions, group.rows.stop - group.rows.start)
                elif group.masked:
                    count = len(conditions)
                    tokens = token_bucket(count) if self.bucket_tokens else -(-count // MASK_ALIGNMENT) * MASK_ALIGNMENT
                    if self.flex:
                        tokens = -(-tokens // FLEX_BLOCK) * FLEX_BLOCK
                        rows = group.rows.stop - group.rows.start
                        mask = flex_mask(covered, conditions, rows, tokens)
                    else:
                        mask = additive_mask(covered[conditions].T[None, None], dtype, tokens)
                cached.append((mask, scale[conditions]))
            self.mask_cache[key] = cached
        return cached

    def layer_inputs(
        self, attn: Attention, context: torch.Tensor, size: tuple[int, int], dtype: torch.dtype
    ) -> LayerInputs:
        """What one cross-attention layer needs at one resolution, per group (see :data:`GroupInputs`).

        Keys carry every score factor folded in. They depend only on the text and the layer's
        resolution, so they are made once per job and pass, not once per step: with many regions
        these projections cost more than the attention itself. ``context`` is one row ``(1, T, c)``.
        """
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        key = key.view(1, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(1, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        masks = self.group_masks(*size, device=key.device, dtype=dtype)
        result = []
        for group, (attn_mask, token_scale) in zip(self.groups, masks, strict=True):
            group_value = value[:, :, group.tokens]
            if isinstance(attn_mask, PackedMask):
                folded = fold_token_scale(key[:, :, group.tokens], token_scale, packed_key_scale(attn.scale, head_dim))
                result.append((group.rows.start, group.rows.stop, *_varlen_layout(folded, group_value), attn_mask))
                continue
            folded = fold_token_scale(key[:, :, group.tokens], token_scale, attn.scale)
            if attn_mask is not None:
                tokens = len(attn_mask.token_condition) if isinstance(attn_mask, FlexMask) else attn_mask.shape[-1]
                folded = _pad_tokens(folded, tokens)
                group_value = _pad_tokens(group_value, tokens)
            start, stop = group.rows.start, group.rows.stop
            result.append((start, stop, folded.contiguous(), group_value.contiguous(), attn_mask))
        return tuple(result)

    def unet_inputs(
        self, unet: torch.nn.Module, context: torch.Tensor, latent_size: tuple[int, int], dtype: torch.dtype
    ) -> dict[str, LayerInputs]:
        """:meth:`layer_inputs` of every cross-attention layer of ``unet`` for one latent size, by
        processor name: the ``regional`` entry of the UNet's ``cross_attention_kwargs``."""
        levels = len(unet.config.block_out_channels)  # type: ignore[union-attr]
        inputs = {}
        for name, module in unet.named_modules():
            if name.endswith("attn2") and isinstance(module, Attention):
                size = layer_size(latent_size, unet_level(name, levels))
                inputs[f"{name}.processor"] = self.layer_inputs(module, context[:1], size, dtype)
        return inputs


def _varlen_layout(key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(1, heads, T, d)`` -> ``(T, heads, d)``, contiguous: the layout of variable-length attention."""
    return key[0].transpose(0, 1).contiguous(), value[0].transpose(0, 1).contiguous()


def stack_jobs(inputs: Sequence[dict[str, LayerInputs]], images: Sequence[int], cfg: bool) -> dict[str, LayerInputs]:
    """The :meth:`RegionalJob.unet_inputs` of several jobs as the inputs of one UNet batch.

    Each job's own rows are ``[negative x images | positive x images]`` (positive only without CFG);
    the batch's rows are kind-major, ``[negatives of job 1, job 2, ... | positives of job 1, job 2,
    ...]``, so the sampling loop still splits CFG with one ``chunk(2)``. Every job keeps its own
    keys, values and masks, so a row sees only its own job's tokens. Adjacent unmasked groups with
    equal keys and values (jobs with the same negative prompt) become one SDPA call.
    """
    if len(inputs) != len(images):
        raise ValueError(f"{len(inputs)} jobs but {len(images)} image counts")
    if len(inputs) == 1:
        return inputs[0]
    total = sum(images)
    stacked = {}
    for name in inputs[0]:
        groups: list[GroupInputs] = []
        offset = 0
        for job_inputs, count in zip(inputs, images, strict=True):
            for start, stop, key, value, attn_mask in job_inputs[name]:
                # A group never straddles the negative/positive boundary (RegionalJob checks it).
                shift = total + offset - count if cfg and start >= count else offset
                groups.append((start + shift, stop + shift, key, value, attn_mask))
            offset += count
        groups.sort(key=lambda group: group[0])
        merged: list[GroupInputs] = []
        for group in groups:
            if merged and _same_unmasked_text(merged[-1], group):
                merged[-1] = (merged[-1][0], group[1], *merged[-1][2:])
            else:
                merged.append(group)
        stacked[name] = tuple(merged)
    return stacked


def _same_unmasked_text(before: GroupInputs, after: GroupInputs) -> bool:
    """Whether two adjacent groups can share one attention call: both unmasked, same keys and values."""
    if before[1] != after[0] or before[4] is not None or after[4] is not None:
        return False
    return before[2].shape == after[2].shape and torch.equal(before[2], after[2]) and torch.equal(before[3], after[3])


def mark_token_dims_dynamic(inputs: dict[str, LayerInputs]) -> None:
    """Tell ``torch.compile`` that masked token counts vary, so one graph serves every bucket."""
    for layer in inputs.values():
        for _, _, key, value, attn_mask in layer:
            if attn_mask is None:
                continue
            if isinstance(attn_mask, PackedMask):
                # Tokens, packed queries, conditions and slots all vary with the canvas.
                for tensor in (key, value, *attn_mask):
                    torch._dynamo.maybe_mark_dynamic(tensor, 0)
                continue
            for tensor in (key, value):
                torch._dynamo.maybe_mark_dynamic(tensor, 2)
            if isinstance(attn_mask, FlexMask):
                # The condition count varies with the canvas too; the query blocks do not.
                for tensor, dim in ((attn_mask.covered, 0), (attn_mask.token_condition, 0),
                                    (attn_mask.kv_indices, 3), (attn_mask.full_kv_indices, 3)):  # fmt: skip
                    torch._dynamo.maybe_mark_dynamic(tensor, dim)
            else:
                torch._dynamo.maybe_mark_dynamic(attn_mask, 3)


class RegionalSelfAttnProcessor(AttnProcessor2_0 if AttnProcessor2_0 is not None else object):  # type: ignore[misc]
    """Stock SDPA self-attention that accepts (and ignores) the ``regional`` inputs.

    diffusers hands every processor the same ``cross_attention_kwargs`` and logs a warning for each
    one a processor does not declare -- once per layer per step, and a graph break when compiled.
    """

    def __call__(  # type: ignore[override]
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regional: dict[str, LayerInputs] | None = None,
    ) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class RegionalCrossAttnProcessor:
    """A diffusers attention processor for cross-attention layers (``attn2``) with Omost's regions.

    Without ``regional`` inputs it is diffusers' stock SDPA processor, so a UNet with these
    installed can still be driven by a stock pipeline (the benchmark does this).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._stock = AttnProcessor2_0()

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regional: dict[str, LayerInputs] | None = None,
    ) -> torch.Tensor:
        if regional is None or encoder_hidden_states is None:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        groups = regional[self.name]
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch = hidden_states.shape[0]

        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        outputs = []
        for start, stop, key, value, attn_mask in groups:
            count = stop - start
            rows = query[start:stop]
            if isinstance(attn_mask, PackedMask):
                outputs.append(packed_attend(rows.transpose(1, 2), key, value, attn_mask).transpose(1, 2))
            elif isinstance(attn_mask, FlexMask):
                outputs.append(flex_attend(rows, key, value, attn_mask).to(rows.dtype))
            else:
                outputs.append(attend(rows, key.expand(count, -1, -1, -1), value.expand(count, -1, -1, -1), attn_mask))
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_regional_processors(unet: torch.nn.Module) -> int:
    """Give every cross-attention layer (``attn2``) a regional processor; return how many.

    Self-attention layers get stock SDPA that tolerates the ``regional`` keyword.
    """
    processors: dict[str, Any] = dict(unet.attn_processors)  # type: ignore[attr-defined]
    count = 0
    for name in processors:
        if name.endswith("attn2.processor"):
            processors[name] = RegionalCrossAttnProcessor(name)
            count += 1
        else:
            processors[name] = RegionalSelfAttnProcessor()
    unet.set_attn_processor(processors)  # type: ignore[attr-defined]
    return count
