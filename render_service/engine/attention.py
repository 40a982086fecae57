"""Omost's regional attention ("attention score manipulation") as one SDPA call.

In every cross-attention of the UNet, pixel p may attend only to the text tokens of regions whose
mask covers p, and each token's score is multiplied by (pixels / pixels of its region), so small
regions are not drowned by the global prompt. Omost builds the score matrix by hand for this; here
the per-token factor is folded into the keys instead -- (q · (s_t k_t)) = s_t (q · k_t) -- so the
whole thing is a single ``scaled_dot_product_attention`` call with a boolean mask, and PyTorch is
free to pick a fused kernel.

The processors get the latent size from an explicit :class:`RegionalAttentionState` that the
sampling loop sets before each UNet call; nothing in diffusers is patched. Text key/value
projections depend only on the text, so they are computed once per job and reused every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

try:  # the processors need diffusers; the pure maths below does not.
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
except ImportError:  # pragma: no cover - diffusers is a render extra
    Attention = Any  # type: ignore[misc,assignment]
    AttnProcessor2_0 = None  # type: ignore[misc,assignment]

__all__ = [
    "RegionalAttentionState",
    "RegionalCrossAttnProcessor",
    "RegionalJob",
    "additive_mask",
    "attend",
    "fold_token_scale",
    "install_regional_processors",
    "regional_attention",
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
"""Token counts of masked groups are padded to this: CUDA's memory-efficient SDPA kernel wants the
mask's last dimension aligned and would otherwise pad (copy) the mask on every call."""


def additive_mask(token_mask: torch.Tensor, dtype: torch.dtype, align: int = 1) -> torch.Tensor | None:
    """SDPA's float form of a bool mask (0 or -inf), made once per job instead of by SDPA every call.

    None when nothing is masked, which lets SDPA pick its fastest (flash) kernel. With ``align`` the
    token dimension is padded with masked columns to a multiple of it (see :data:`MASK_ALIGNMENT`).
    """
    if bool(token_mask.all()):
        return None
    tokens = token_mask.shape[-1]
    padded = -(-tokens // align) * align
    bias = torch.full((*token_mask.shape[:-1], padded), float("-inf"), dtype=dtype, device=token_mask.device)
    bias[..., :tokens].masked_fill_(token_mask, 0.0)
    return bias


def _pad_tokens(tensor: torch.Tensor, tokens: int) -> torch.Tensor:
    """Zero keys/values for the masked padding columns of :func:`additive_mask`."""
    missing = tokens - tensor.shape[-2]
    return F.pad(tensor, (0, 0, 0, missing)) if missing > 0 else tensor


@dataclass
class _Group:
    """The rows of one kind (negative or positive) and the tokens they may see."""

    rows: slice
    tokens: slice
    conditions: torch.Tensor
    """(T_k,) the condition of each of these tokens."""


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
    cache_text_kv: bool = True
    kv_cache: dict[tuple[str, int, int], list[tuple[torch.Tensor, torch.Tensor]]] = field(default_factory=dict)
    mask_cache: dict[tuple[int, int, torch.dtype], list[tuple[torch.Tensor | None, torch.Tensor]]] = field(
        default_factory=dict
    )

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
            groups.append(
                _Group(slice(int(rows[0]), int(rows[-1]) + 1), token_slice, self.token_condition[token_slice])
            )
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
    ) -> list[tuple[torch.Tensor | None, torch.Tensor]]:
        """Per group: (SDPA mask ``(1, 1, N, T_k)`` or None, token scale ``(T_k,)``), cached per size."""
        key = (height, width, dtype)
        cached = self.mask_cache.get(key)
        if cached is None:
            covered, scale = self._coverage(height, width, device)
            cached = []
            for group in self.groups:
                conditions = group.conditions.to(device)
                mask = additive_mask(covered[conditions].T[None, None], dtype, align=MASK_ALIGNMENT)
                cached.append((mask, scale[conditions]))
            self.mask_cache[key] = cached
        return cached


class RegionalAttentionState:
    """What the sampling loop tells the processors: the current job and the latent size.

    Without an active job the processors behave exactly like diffusers' stock SDPA processor, so a
    UNet with them installed can still be driven by a stock pipeline (the benchmark does this).
    """

    def __init__(self) -> None:
        self.job: RegionalJob | None = None
        self.latent_size: tuple[int, int] | None = None

    def attention_size(self, tokens: int) -> tuple[int, int]:
        """The (height, width) of an attention layer that sees ``tokens`` pixels.

        Each UNet downsample is a stride-2 convolution with padding 1, i.e. ceil(size / 2).
        """
        if self.latent_size is None:
            raise RuntimeError("regional attention used without a latent size; set state.latent_size first")
        height, width = self.latent_size
        factor = 1
        while factor <= 64:
            size = (-(-height // factor), -(-width // factor))
            if size[0] * size[1] == tokens:
                return size
            factor *= 2
        raise RuntimeError(f"no UNet level of a {height}x{width} latent has {tokens} pixels")


class RegionalCrossAttnProcessor:
    """A diffusers attention processor for cross-attention layers (``attn2``) with Omost's regions."""

    def __init__(self, state: RegionalAttentionState, name: str) -> None:
        self.state = state
        self.name = name
        self._stock = AttnProcessor2_0()

    def _text_kv(
        self, attn: Attention, context: torch.Tensor, job: RegionalJob, size: tuple[int, int], dtype: torch.dtype
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per group: keys with every score factor folded in, and values, both ``(1, heads, T_k, d)``.

        They depend only on the text and this layer's resolution, so they are made once per job
        and pass, not once per step: with many regions these projections cost more than the
        attention itself.
        """
        cache_key = (self.name, *size)
        cached = job.kv_cache.get(cache_key) if job.cache_text_kv else None
        if cached is not None:
            return cached
        # Every row of the batch carries the same token sequence (rows differ only by mask), so
        # one row is projected and the result shared.
        context = context[:1]
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        key = key.view(1, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(1, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        masks = job.group_masks(*size, device=key.device, dtype=dtype)
        result = []
        for group, (attn_mask, token_scale) in zip(job.groups, masks, strict=True):
            folded = fold_token_scale(key[:, :, group.tokens], token_scale, attn.scale)
            group_value = value[:, :, group.tokens]
            if attn_mask is not None:
                folded = _pad_tokens(folded, attn_mask.shape[-1])
                group_value = _pad_tokens(group_value, attn_mask.shape[-1])
            result.append((folded.contiguous(), group_value.contiguous()))
        if job.cache_text_kv:
            job.kv_cache[cache_key] = result
        return result

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        job = self.state.job
        if job is None or encoder_hidden_states is None:
            return self._stock(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        batch, pixels, _ = hidden_states.shape
        if batch != len(job.row_kind):
            raise RuntimeError(f"regional job has {len(job.row_kind)} rows but the UNet batch has {batch}")

        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        size = self.state.attention_size(pixels)
        kv = self._text_kv(attn, encoder_hidden_states, job, size, query.dtype)
        masks = job.group_masks(*size, device=query.device, dtype=query.dtype)
        outputs = []
        for group, (key, value), (attn_mask, _) in zip(job.groups, kv, masks, strict=True):
            rows = query[group.rows]
            count = rows.shape[0]
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


def install_regional_processors(unet: torch.nn.Module, state: RegionalAttentionState) -> int:
    """Give every cross-attention layer (``attn2``) a regional processor; return how many.

    Self-attention layers keep whatever processor they had (stock SDPA).
    """
    processors: dict[str, Any] = dict(unet.attn_processors)  # type: ignore[attr-defined]
    count = 0
    for name in processors:
        if name.endswith("attn2.processor"):
            processors[name] = RegionalCrossAttnProcessor(state, name)
            count += 1
    unet.set_attn_processor(processors)  # type: ignore[attr-defined]
    return count
