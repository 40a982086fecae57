"""What every backend shares: the token factor folded into the keys, and padded token counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_ALIGNMENT = 16
"""Token counts of masked groups are padded to at least this multiple: CUDA's memory-efficient SDPA
kernel wants the mask's last dimension aligned and would otherwise pad (copy) the mask every call."""

TOKEN_BUCKET_BASE = 256


def fold_token_scale(key: torch.Tensor, token_scale: torch.Tensor, scale: float) -> torch.Tensor:
    """``key · token_scale · scale`` per token: q·(s k) = s (q·k), so the factor rides in the keys.

    The softmax scale goes in too (the kernel then runs with scale=1): the product is formed in fp32
    and rounded once, and fp16 keys keep 1/sqrt(d) more headroom before overflowing.
    """
    if token_scale.dim() == 1:
        factor = token_scale[None, None, :, None]
    elif token_scale.dim() == 2:
        factor = token_scale[:, None, :, None]
    else:
        raise ValueError(f"token_scale must be (T,) or (B, T); got {tuple(token_scale.shape)}")
    return (key.float() * (factor.float() * scale)).to(key.dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a backend forms products and softmax sums in: fp32 for the half types and fp32,
    float64 kept (the float64 reference tests compare against it at 1e-9)."""
    return torch.promote_types(dtype, torch.float32)


def scale_keys(key: torch.Tensor, factor: torch.Tensor | None, scale: float = 1.0) -> torch.Tensor:
    """``key`` ``(B, S, H, d)`` times a per-token ``factor`` ``(S,)`` (None: 1) and ``scale``, formed in
    :func:`compute_dtype` and rounded once (a token's score factor rides in its key: q·(s k) = s (q·k))."""
    wide = compute_dtype(key.dtype)
    if factor is None:
        return (key.to(wide) * scale).to(key.dtype)
    return (key.to(wide) * (factor.to(device=key.device, dtype=wide) * scale)[None, :, None, None]).to(key.dtype)


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


def padded_tokens(count: int, bucket_tokens: bool) -> int:
    """A masked group's padded token count: a :func:`token_bucket` for a compiled UNet (few shapes),
    else only aligned to :data:`MASK_ALIGNMENT` (eager: fewer masked tokens to attend over)."""
    return token_bucket(count) if bucket_tokens else -(-count // MASK_ALIGNMENT) * MASK_ALIGNMENT


def pad_tokens(tensor: torch.Tensor, tokens: int) -> torch.Tensor:
    """Zero keys/values ``(..., T, d)`` up to ``tokens``: the masked padding columns of a group."""
    missing = tokens - tensor.shape[-2]
    return F.pad(tensor, (0, 0, 0, missing)) if missing > 0 else tensor
