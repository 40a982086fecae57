"""Regional attention through FlexAttention with a block mask (compiled UNets only).

The masked group's mask is a :class:`FlexMask`: which pixels each condition covers, each padded
token's condition and the block tables of a ``BlockMask`` (128 queries x 128 tokens), built once per
job and resolution; blocks no pixel may see are never computed. Measured slower than the SDPA path
on an H200 (docs/render-engine.md), so it is a choice to re-measure, not the default.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from render_service.engine.backends import AttentionBackend
from render_service.engine.backends.common import fold_token_scale, pad_tokens, padded_tokens

__all__ = ["BACKEND", "FLEX_BLOCK", "FlexBackend", "FlexMask", "flex_attend", "flex_mask"]

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
    """The SDPA path's attention with FlexAttention: query ``(rows, heads, N, d)``, keys and values
    ``(1, heads, T_bucket, d)`` (every row sees the same tokens), the mask as :class:`FlexMask`.

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


class FlexBackend(AttentionBackend[FlexMask]):
    name = "flex"

    def group_mask(
        self, covered: torch.Tensor, conditions: torch.Tensor, rows: int, dtype: torch.dtype, bucket_tokens: bool
    ) -> FlexMask:
        tokens = -(-padded_tokens(len(conditions), bucket_tokens) // FLEX_BLOCK) * FLEX_BLOCK
        return flex_mask(covered, conditions, rows, tokens)

    def layout(
        self, key: torch.Tensor, value: torch.Tensor, token_scale: torch.Tensor, softmax_scale: float, mask: FlexMask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = len(mask.token_condition)
        folded = pad_tokens(fold_token_scale(key, token_scale, softmax_scale), tokens)
        return folded.contiguous(), pad_tokens(value, tokens).contiguous()

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: FlexMask) -> torch.Tensor:
        return flex_attend(query, key, value, mask).to(query.dtype)

    def mark_dynamic(self, key: torch.Tensor, value: torch.Tensor, mask: FlexMask) -> None:
        for tensor in (key, value):
            torch._dynamo.maybe_mark_dynamic(tensor, 2)
        # The condition count varies with the canvas too; the query blocks do not.
        for tensor, dim in ((mask.covered, 0), (mask.token_condition, 0), (mask.kv_indices, 3),
                            (mask.full_kv_indices, 3)):  # fmt: skip
            torch._dynamo.maybe_mark_dynamic(tensor, dim)


BACKEND = FlexBackend()
