"""Regional attention as one ``scaled_dot_product_attention`` call with an additive mask (the default).

Pixel p may attend only to the tokens of regions whose mask covers p, and each token's score is
multiplied by (pixels / pixels of its region). Omost builds the score matrix by hand for this; here
the factor is folded into the keys (:func:`~.common.fold_token_scale`), so the whole thing is one
SDPA call with a mask and PyTorch is free to pick a fused kernel. It pays for every (pixel, token)
pair, masked or not; :mod:`.packed` computes only the allowed pairs.

On Flux (the ``joint`` layout) the mask is the dense ``(S, S)`` bool joint mask of
:func:`~render_service.engine.backends.joint_allowed`, made once per job and broadcast over heads
and batch: three calls in a masked block (text rows; image rows with the area factor in the keys;
the base pass). Kept as the dense reference path; ``packed`` is Flux's default.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from render_service.engine.backends import AttentionBackend, JointAttentionBackend, joint_allowed
from render_service.engine.backends.common import fold_token_scale, pad_tokens, padded_tokens, scale_keys

__all__ = ["BACKEND", "DenseJointMask", "SdpaBackend", "additive_mask", "attend", "regional_attention"]


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


def additive_mask(token_mask: torch.Tensor, dtype: torch.dtype, tokens: int | None = None) -> torch.Tensor:
    """SDPA's float form of a bool mask (0 where allowed, -inf elsewhere), made once per job.

    Pure tensor ops with no data-dependent branch. ``tokens`` pads the last dimension with masked
    columns to that length (see :func:`~.common.token_bucket`).
    """
    count = token_mask.shape[-1]
    padded = count if tokens is None else tokens
    if padded < count:
        raise ValueError(f"cannot pad {count} tokens to {padded}")
    bias = torch.full((*token_mask.shape[:-1], padded), float("-inf"), dtype=dtype, device=token_mask.device)
    bias[..., :count].masked_fill_(token_mask, 0.0)
    return bias


class DenseJointMask(NamedTuple):
    """Flux's joint mask as SDPA takes it (made once per job, broadcast over batch and heads)."""

    allowed: torch.Tensor
    """(S, S) bool: :func:`~render_service.engine.backends.joint_allowed`."""
    base_allowed: torch.Tensor
    """(N, S) bool: the base pass's image rows see the global condition's text and every image token."""
    key_scale: torch.Tensor | None
    """(S,): the factor image rows apply to each key's score (1 on image keys); None: no factor."""
    text_length: int


class SdpaBackend(AttentionBackend[torch.Tensor | None], JointAttentionBackend[DenseJointMask]):
    """The mask is an additive bias ``(1, 1, N, T_padded)``, or None: every pixel sees every token
    (the unmasked groups of every backend come here)."""

    name = "sdpa"

    def group_mask(
        self, covered: torch.Tensor, conditions: torch.Tensor, rows: int, dtype: torch.dtype, bucket_tokens: bool
    ) -> torch.Tensor | None:
        return additive_mask(covered[conditions].T[None, None], dtype, padded_tokens(len(conditions), bucket_tokens))

    def layout(
        self,
        key: torch.Tensor,
        value: torch.Tensor,
        token_scale: torch.Tensor,
        softmax_scale: float,
        mask: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        folded = fold_token_scale(key, token_scale, softmax_scale)
        if mask is not None:
            folded, value = pad_tokens(folded, mask.shape[-1]), pad_tokens(value, mask.shape[-1])
        return folded.contiguous(), value.contiguous()

    def attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        rows = query.shape[0]
        return attend(query, key.expand(rows, -1, -1, -1), value.expand(rows, -1, -1, -1), mask)

    def mark_dynamic(self, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> None:
        if mask is None:
            return
        for tensor in (key, value):
            torch._dynamo.maybe_mark_dynamic(tensor, 2)
        torch._dynamo.maybe_mark_dynamic(mask, 3)

    def joint_mask(
        self, token_condition: torch.Tensor, covered: torch.Tensor, key_scale: torch.Tensor | None, rows: int
    ) -> DenseJointMask:
        text, pixels = len(token_condition), covered.shape[1]
        sees = torch.cat([token_condition == 0, torch.ones(pixels, dtype=torch.bool, device=covered.device)])
        full_scale = None if key_scale is None else torch.cat([key_scale, key_scale.new_ones(pixels)])
        return DenseJointMask(
            joint_allowed(token_condition, covered), sees[None, :].expand(pixels, -1).clone(), full_scale, text
        )

    def joint_attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: DenseJointMask, base: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        text = mask.text_length
        # The softmax scale rides in the keys (the kernel runs with scale=1), like the area factor.
        softmax = key.shape[-1] ** -0.5
        q, k, v = (t.transpose(1, 2) for t in (query, scale_keys(key, None, softmax), value))
        if mask.key_scale is None:
            out = attend(q, k, v, mask.allowed)
        else:
            # Scaling a key scales its score for the rows that use it: the image rows get the
            # area-scaled keys, the text rows the plain ones, in two calls.
            scaled = scale_keys(key, mask.key_scale, softmax).transpose(1, 2)
            text_rows = attend(q[:, :, :text], k, v, mask.allowed[:text])
            out = torch.cat([text_rows, attend(q[:, :, text:], scaled, v, mask.allowed[text:])], dim=2)
        base_out = attend(q[:, :, text:], k, v, mask.base_allowed).transpose(1, 2) if base else None
        return out.transpose(1, 2), base_out


BACKEND = SdpaBackend()
