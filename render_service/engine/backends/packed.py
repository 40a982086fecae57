"""Regional attention computed only where it is allowed: variable-length attention per condition.

The SDPA path (:mod:`.sdpa`) scores every pixel against every
token of the positive prompt and masks most of the scores away: on real Omost canvases a pixel may
see 34-60 % of the tokens (34 % on a 12-region canvas), yet it pays for all of them, on the
memory-efficient kernel that takes a bias. Here each condition is one sequence of a
variable-length ("varlen") attention call: its queries are the pixels it covers (in every row of
the group), its keys its own tokens. No masked pair is computed, and on CUDA in fp16/bf16 the call
is FlashAttention's varlen kernel (:func:`torch.nn.attention.varlen.varlen_attn`), no bias.

A pixel covered by several conditions gets one partial result per condition, each with its
log-sum-exp; softmax over the union of their tokens is the LSE-weighted sum of the partials,
``out = sum_c exp(lse_c - logsumexp_c lse_c) out_c``. The partials are laid out in *slots* (the
k-th condition covering a pixel goes to slot k), so the merge is a softmax over slots and a
weighted sum: deterministic, no atomic adds. Scores keep Omost's per-token factor folded into the
keys, as on the SDPA path.

Everything is a tensor or a size read from a tensor's shape (a custom op with a fake kernel), so
``torch.compile`` traces it in one graph whose token, condition and slot counts are dynamic.

On Flux (the ``joint`` layout, :class:`PackedJointMask`) the same kernel computes every allowed pair
of the joint mask once and no other, in one varlen call per attention: condition c's text rows
against its own text and the image tokens it covers (one sequence each, complete: no merge); all
image rows against all image tokens (one sequence); and the image rows c covers against c's text
with the area factor in the keys (one sequence each). An image row's partials (image, then each
covering condition in order) are merged by their log-sum-exps as above. The global condition
covers every image token and has factor 1, so the base pass (image + the global's text) is the
merge of the first two slots alone: it costs no kernel call.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from render_service.engine.backends import AttentionBackend, JointAttentionBackend
from render_service.engine.backends.common import compute_dtype, fold_token_scale, scale_keys

__all__ = [
    "BACKEND",
    "PackedBackend",
    "PackedJointMask",
    "PackedMask",
    "packed_attend",
    "packed_attention",
    "packed_joint_attend",
    "packed_joint_mask",
    "packed_kernel",
    "packed_key_scale",
    "packed_mask",
]


MIN_DYNAMIC = 2
"""The least sequence and slot count of a :class:`PackedMask` (see :func:`packed_mask`)."""


class PackedMask(NamedTuple):
    """A masked group's mask as varlen sequences, one per condition (made once per job and size).

    Rows of the group and pixels are flattened as ``row * pixels + pixel`` ("places")."""

    gather: torch.Tensor
    """(Q,) long: the place of each packed query; sequence c holds the places its condition covers."""
    slot: torch.Tensor
    """(Q,) long: where each packed query's partial result goes, ``slot * places + place``."""
    cu_seq_q: torch.Tensor
    """(C + 1,) int32: cumulative packed queries per condition."""
    cu_seq_k: torch.Tensor
    """(C + 1,) int32: cumulative tokens per condition (a condition's tokens are contiguous)."""
    slots: torch.Tensor
    """(K,): only its length is read -- the most conditions covering one pixel (dynamic when compiled)."""


def packed_mask(covered: torch.Tensor, token_condition: torch.Tensor, rows: int) -> PackedMask:
    """The :class:`PackedMask` of a group: ``covered`` (conditions, N) bool at one resolution,
    ``token_condition`` (T,) the condition of each of the group's tokens, ``rows`` rows of the batch."""
    conditions, counts = torch.unique_consecutive(token_condition, return_counts=True)
    if len(torch.unique(conditions)) != len(conditions):
        raise ValueError("a condition's tokens must be contiguous for packed attention")
    cover = covered[conditions]  # (C, N), in token order
    pixels = cover.shape[1]
    # Packed queries in (condition, row, pixel) order: nonzero() walks the expanded mask that way.
    condition, row, pixel = cover[:, None, :].expand(-1, rows, -1).nonzero(as_tuple=True)
    place = row * pixels + pixel
    rank = torch.cumsum(cover.to(torch.long), dim=0) - 1  # the k-th condition covering a pixel: slot k
    slot = rank[condition, pixel] * (rows * pixels) + place
    per_condition = cover.sum(dim=1) * rows
    zero = torch.zeros(1, dtype=torch.long, device=cover.device)
    cu_seq_q = torch.cat([zero, per_condition.cumsum(0)])
    cu_seq_k = torch.cat([zero, counts.to(cover.device).cumsum(0)])
    # A compiled graph specialises any dimension of size 1, so a global-only canvas (one sequence,
    # one slot) would compile a graph of its own on a user's job; an empty sequence and an empty
    # slot keep both at 2 or more. Neither changes the result.
    if len(conditions) < MIN_DYNAMIC:
        cu_seq_q, cu_seq_k = (torch.cat([cu, cu[-1:]]) for cu in (cu_seq_q, cu_seq_k))
    slots = torch.arange(max(int(cover.sum(dim=0).max()), MIN_DYNAMIC), device=cover.device)
    return PackedMask(place, slot, cu_seq_q.to(torch.int32), cu_seq_k.to(torch.int32), slots)


def packed_key_scale(softmax_scale: float, head_dim: int) -> float:
    """The factor folded into packed keys beside each token's: the kernel applies its default
    ``1/sqrt(head_dim)`` (every torch version has that; not every one takes ``scale=``)."""
    return softmax_scale * math.sqrt(head_dim)


@functools.cache
def _varlen_flash() -> Callable[..., torch.Tensor | tuple[torch.Tensor, torch.Tensor]] | None:
    """FlashAttention's varlen kernel with the log-sum-exp, or None on a torch without it."""
    try:
        from torch.nn.attention.varlen import AuxRequest, varlen_attn
    except ImportError:  # the reference kernel serves
        return None
    if "return_aux" not in inspect.signature(varlen_attn).parameters:  # early versions gave no LSE
        return None
    return functools.partial(varlen_attn, return_aux=AuxRequest(lse=True))


def _cpu_flash() -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
    """PyTorch's fused CPU attention that also returns the log-sum-exp, or None on a torch without it."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def packed_kernel(device: torch.device | str, dtype: torch.dtype) -> str:
    """Which kernel :func:`packed_attention` runs for these inputs: ``flash-varlen`` (CUDA, fp16/bf16),
    ``flash-cpu`` (PyTorch's fused CPU attention, one call per sequence) or ``reference``."""
    kind = torch.device(device).type
    if kind == "cuda" and dtype in (torch.float16, torch.bfloat16) and _varlen_flash() is not None:
        return "flash-varlen"
    if kind == "cpu" and _cpu_flash() is not None:
        return "flash-cpu"
    return "reference"


def _flash_cpu(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor, cu_seq_k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence by sequence through PyTorch's fused CPU kernel (no score matrix; its log-sum-exp is
    fp32, float64 for float64): about 4x the explicit softmax of :func:`_reference` on one thread."""
    flash = _cpu_flash()
    assert flash is not None
    out = torch.zeros_like(query)
    lse = torch.full((query.shape[1], query.shape[0]), float("-inf"), dtype=compute_dtype(query.dtype))
    starts_q, starts_k = cu_seq_q.tolist(), cu_seq_k.tolist()
    for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:], strict=False):
        if q1 == q0 or k1 == k0:
            continue
        part, sums = flash(*(t.transpose(0, 1)[None] for t in (query[q0:q1], key[k0:k1], value[k0:k1])))
        out[q0:q1] = part[0].transpose(0, 1)
        lse[:, q0:q1] = sums[0]
    return out, lse


def _reference(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu_seq_q: torch.Tensor, cu_seq_k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence by sequence in fp32 (float64 kept), explicit softmax: the CPU kernel, and CUDA's in fp32."""
    heads, dim = query.shape[1], query.shape[2]
    wide = compute_dtype(query.dtype)
    out = torch.zeros_like(query)
    lse = torch.full((heads, query.shape[0]), float("-inf"), dtype=wide, device=query.device)
    starts_q, starts_k = cu_seq_q.tolist(), cu_seq_k.tolist()
    for q0, q1, k0, k1 in zip(starts_q, starts_q[1:], starts_k, starts_k[1:], strict=False):
        if q1 == q0 or k1 == k0:
            continue
        q = query[q0:q1].transpose(0, 1).to(wide)
        k = key[k0:k1].transpose(0, 1).to(wide)
        v = value[k0:k1].transpose(0, 1).to(wide)
        scores = (q @ k.transpose(1, 2)) / math.sqrt(dim)
        sums = torch.logsumexp(scores, dim=-1, keepdim=True)
        lse[:, q0:q1] = sums[..., 0]
        out[q0:q1] = (torch.exp(scores - sums) @ v).transpose(0, 1).to(out.dtype)
    return out, lse


@torch.library.custom_op("omost::packed_attention", mutates_args=())
def packed_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length attention, softmax scale ``1/sqrt(d)``: query ``(Q, H, d)``, keys and values
    ``(T, H, d)``, sequence i = queries ``cu_seq_q[i]:cu_seq_q[i+1]`` x keys ``cu_seq_k[i]:...``.
    Returns the output ``(Q, H, d)`` and the log-sum-exp ``(H, Q)`` in fp32, float64 for float64
    inputs (FlashAttention's layout).
    ``max_q``/``max_k`` bound the longest sequence (upper bounds are fine)."""
    return _reference(query, key, value, cu_seq_q, cu_seq_k)


@packed_attention.register_kernel("cpu")
def _packed_attention_cpu(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    if packed_kernel(query.device, query.dtype) == "flash-cpu":
        return _flash_cpu(query, key, value, cu_seq_q, cu_seq_k)
    return _reference(query, key, value, cu_seq_q, cu_seq_k)


@packed_attention.register_kernel("cuda")
def _packed_attention_cuda(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    flash = _varlen_flash()
    if flash is None or packed_kernel(query.device, query.dtype) != "flash-varlen":
        return _reference(query, key, value, cu_seq_q, cu_seq_k)
    result = flash(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)
    assert isinstance(result, tuple)  # asked for the log-sum-exp: (output, lse)
    out, lse = result
    return out, lse.float()


@packed_attention.register_fake
def _packed_attention_fake(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    lse = query.new_empty((query.shape[1], query.shape[0]), dtype=compute_dtype(query.dtype))
    return torch.empty_like(query), lse


def packed_attend(rows: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: PackedMask) -> torch.Tensor:
    """Regional attention of a group's ``rows`` ``(R, N, H, d)`` over its tokens (keys folded with
    each token's factor and :func:`packed_key_scale`, ``(T, H, d)``); returns ``(R, N, H, d)``."""
    count, pixels, heads, dim = rows.shape
    places = count * pixels
    query = rows.reshape(places, heads, dim).index_select(0, mask.gather)
    # Bounds from shapes, not Python ints: a compiled graph then guards on nothing per canvas.
    out, lse = packed_attention(query, key, value, mask.cu_seq_q, mask.cu_seq_k, places, key.shape[0])
    slots = mask.slots.shape[0]
    partial_lse = lse.new_full((heads, slots * places), float("-inf")).index_copy(1, mask.slot, lse)
    weight = torch.softmax(partial_lse.view(heads, slots, places), dim=1)
    partial = out.new_zeros((slots * places, heads, dim)).index_copy(0, mask.slot, out)
    merged = torch.einsum("hkp,kphd->phd", weight, partial.view(slots, places, heads, dim).to(weight.dtype))
    return merged.to(rows.dtype).view(count, pixels, heads, dim)


class PackedJointMask(NamedTuple):
    """Flux's joint mask as varlen sequences over the job's ``rows`` x ``(T + N)`` tokens (made once
    per job, device and batch size). Queries index ``query.flatten(0, 1)``; keys index
    ``cat([key.flatten(0, 1), area-scaled text keys (rows * T)])``; values ``value.flatten(0, 1)``."""

    query_index: torch.Tensor
    """(Q,) long: the packed queries, sequence after sequence."""
    key_index: torch.Tensor
    """(K,) long: the packed keys (an image row's keys for a region's text point at the scaled copy)."""
    value_index: torch.Tensor
    """(K,) long: the packed values (the same tokens, unscaled)."""
    cu_seq_q: torch.Tensor
    """(sequences + 1,) int32: cumulative packed queries."""
    cu_seq_k: torch.Tensor
    """(sequences + 1,) int32: cumulative packed keys."""
    text_out: torch.Tensor
    """(rows * T,) long: where each text row's (complete) output is among the packed queries."""
    image_out: torch.Tensor
    """(P,) long: the packed queries that are image rows' partial results..."""
    image_slot: torch.Tensor
    """(P,) long: ...and their place ``slot * rows * N + row * N + pixel`` (slot 0: image, k: the k-th
    covering condition, so slot 1 is the global condition's for every pixel)."""
    key_scale: torch.Tensor | None
    """(T,): the area factor of each text token's key for image rows (None: no factor)."""
    slots: int
    max_q: int
    max_k: int


def packed_joint_mask(
    token_condition: torch.Tensor, covered: torch.Tensor, key_scale: torch.Tensor | None, rows: int
) -> PackedJointMask:
    """The :class:`PackedJointMask` of a job (see the module docstring): every pair the joint mask
    allows is in exactly one sequence, and no other pair is in any."""
    conditions, counts = torch.unique_consecutive(token_condition, return_counts=True)
    if len(torch.unique(conditions)) != len(conditions):
        raise ValueError("a condition's tokens must be contiguous for packed attention")
    if int(conditions[0]) != 0 or not bool(covered[0].all()):
        raise ValueError("the first condition must be the global one, covering every image token")
    text, pixels = len(token_condition), covered.shape[1]
    span = text + pixels
    starts = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).tolist()
    cover = [torch.nonzero(covered[int(c)]).flatten() for c in conditions]
    # The k-th condition (in token order) covering a pixel gives it slot k + 1; slot 0 is the image's.
    rank = torch.cumsum(covered[conditions].to(torch.long), dim=0) - 1
    scaled_base = rows * span if key_scale is not None else None
    queries: list[torch.Tensor] = []
    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    text_out: list[torch.Tensor] = []
    image_out: list[torch.Tensor] = []
    image_slot: list[torch.Tensor] = []
    packed = 0

    def sequence(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> int:
        nonlocal packed
        queries.append(query)
        keys.append(key)
        values.append(value)
        packed += len(query)
        return packed - len(query)

    for row in range(rows):
        first = row * span
        image = first + text + torch.arange(pixels)
        for index, pixel in enumerate(cover):
            # Condition c's text rows: its own text and the image tokens it covers (complete).
            own = first + torch.arange(starts[index], starts[index + 1])
            at = sequence(own, torch.cat([own, first + text + pixel]), torch.cat([own, first + text + pixel]))
            text_out.append(at + torch.arange(len(own)))
        # Every image row against every image token: slot 0.
        at = sequence(image, image, image)
        image_out.append(at + torch.arange(pixels))
        image_slot.append(row * pixels + torch.arange(pixels))
        for index, pixel in enumerate(cover):
            # The image rows condition c covers against c's text, area factor in the keys.
            tokens = torch.arange(starts[index], starts[index + 1])
            key = (first + tokens) if scaled_base is None else (scaled_base + row * text + tokens)
            at = sequence(first + text + pixel, key, first + tokens)
            image_out.append(at + torch.arange(len(pixel)))
            slot = rank[index, pixel] + 1
            image_slot.append(slot * (rows * pixels) + row * pixels + pixel)
    q_lengths = torch.tensor([len(q) for q in queries])
    k_lengths = torch.tensor([len(k) for k in keys])
    zero = torch.zeros(1, dtype=torch.long)
    return PackedJointMask(
        query_index=torch.cat(queries),
        key_index=torch.cat(keys),
        value_index=torch.cat(values),
        cu_seq_q=torch.cat([zero, q_lengths.cumsum(0)]).to(torch.int32),
        cu_seq_k=torch.cat([zero, k_lengths.cumsum(0)]).to(torch.int32),
        text_out=torch.cat(text_out),
        image_out=torch.cat(image_out),
        image_slot=torch.cat(image_slot),
        key_scale=key_scale,
        slots=int(covered.sum(dim=0).max()) + 1,
        max_q=int(q_lengths.max()),
        max_k=int(k_lengths.max()),
    )


def packed_joint_attend(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: PackedJointMask, base: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:meth:`JointAttentionBackend.joint_attend` on a :class:`PackedJointMask`: one varlen call."""
    rows, span, heads, dim = query.shape
    text = len(mask.text_out) // rows
    pixels = span - text
    sources = key.flatten(0, 1)
    if mask.key_scale is not None:
        sources = torch.cat([sources, scale_keys(key[:, :text], mask.key_scale).flatten(0, 1)])
    out, lse = packed_attention(
        query.flatten(0, 1).index_select(0, mask.query_index),
        sources.index_select(0, mask.key_index),
        value.flatten(0, 1).index_select(0, mask.value_index),
        mask.cu_seq_q, mask.cu_seq_k, mask.max_q, mask.max_k,
    )  # fmt: skip
    places = rows * pixels
    partial_lse = lse.new_full((heads, mask.slots * places), float("-inf"))
    partial_lse = partial_lse.index_copy(1, mask.image_slot, lse.index_select(1, mask.image_out))
    partial = out.new_zeros((mask.slots * places, heads, dim))
    partial = partial.index_copy(0, mask.image_slot, out.index_select(0, mask.image_out))
    partial_lse = partial_lse.view(heads, mask.slots, places)
    partial = partial.view(mask.slots, places, heads, dim).to(lse.dtype)
    image = torch.einsum("hkp,kphd->phd", torch.softmax(partial_lse, dim=1), partial)
    text_rows = out.index_select(0, mask.text_out).view(rows, text, heads, dim)
    merged = torch.cat([text_rows, image.to(out.dtype).view(rows, pixels, heads, dim)], dim=1)
    if not base:
        return merged, None
    # Slots 0 and 1 are the image and the global condition (factor 1) for every pixel: the base pass.
    first = torch.einsum("hkp,kphd->phd", torch.softmax(partial_lse[:, :2], dim=1), partial[:2])
    return merged, first.to(out.dtype).view(rows, pixels, heads, dim)


class PackedBackend(AttentionBackend[PackedMask], JointAttentionBackend[PackedJointMask]):
    """Keys and values in varlen layout ``(T, heads, d)``; the mask is a :class:`PackedMask`."""

    name = "packed"

    def group_mask(
        self, covered: torch.Tensor, conditions: torch.Tensor, rows: int, dtype: torch.dtype, bucket_tokens: bool
    ) -> PackedMask:
        return packed_mask(covered, conditions, rows)

    def layout(
        self, key: torch.Tensor, value: torch.Tensor, token_scale: torch.Tensor, softmax_scale: float, mask: PackedMask
    ) -> tuple[torch.Tensor, torch.Tensor]:
        folded = fold_token_scale(key, token_scale, packed_key_scale(softmax_scale, key.shape[-1]))
        return folded[0].transpose(0, 1).contiguous(), value[0].transpose(0, 1).contiguous()

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: PackedMask) -> torch.Tensor:
        return packed_attend(query.transpose(1, 2), key, value, mask).transpose(1, 2)

    def mark_dynamic(self, key: torch.Tensor, value: torch.Tensor, mask: PackedMask) -> None:
        # Tokens, packed queries, conditions and slots all vary with the canvas.
        for tensor in (key, value, *mask):
            torch._dynamo.maybe_mark_dynamic(tensor, 0)

    def joint_mask(
        self, token_condition: torch.Tensor, covered: torch.Tensor, key_scale: torch.Tensor | None, rows: int
    ) -> PackedJointMask:
        return packed_joint_mask(token_condition, covered, key_scale, rows)

    def joint_attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: PackedJointMask, base: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return packed_joint_attend(query, key, value, mask, base)


BACKEND = PackedBackend()
