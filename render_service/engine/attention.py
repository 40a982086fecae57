"""Omost's regional attention ("attention score manipulation") in SDXL's UNet: the per-job inputs
and the diffusers processors that hand them to the chosen attention backend.

In every cross-attention of the UNet, pixel p may attend only to the text tokens of regions whose
mask covers p, and each token's score is multiplied by (pixels / pixels of its region), so small
regions are not drowned by the global prompt. How the allowed pairs are computed is the attention
backend's business (:mod:`render_service.engine.backends`: one masked SDPA call, packed varlen
sequences, FlexAttention); this module decides which rows see which tokens, never which kernel.

Everything a job contributes reaches the processors as tensors passed through the UNet call
(``cross_attention_kwargs={"regional": ...}``, diffusers' own channel to processors), never as
Python state the processors read: text key/value projections and masks are made once per job and
pass (:meth:`RegionalJob.cross_attention_inputs`), and the processors only slice and call the
backend. That is what lets ``torch.compile`` trace the UNet in one graph with no data-dependent
branch, and reuse that graph for any canvas (token counts are padded to a few buckets and marked
dynamic). Nothing in diffusers is patched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.nn.functional as F

from render_service.engine.backends import DEFAULT_ATTENTION, AttentionBackend, attention_backend, dense_backend

if TYPE_CHECKING:
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

try:  # the processors need diffusers; the job's masks do not.
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0
except ImportError:  # pragma: no cover - diffusers is a render extra
    Attention = Any  # type: ignore[misc,assignment]
    AttnProcessor2_0 = None  # type: ignore[misc,assignment]

__all__ = [
    "GroupInputs",
    "LayerInputs",
    "RegionalCrossAttnProcessor",
    "RegionalJob",
    "RegionalSelfAttnProcessor",
    "install_regional_processors",
    "layer_size",
    "mark_token_dims_dynamic",
    "stack_jobs",
    "unet_level",
]


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


class GroupInputs(NamedTuple):
    """One group's share of a cross-attention call: rows ``start:stop`` of the UNet batch attend to
    the group's tokens through ``backend``."""

    start: int
    stop: int
    key: torch.Tensor
    """The tokens' keys with every score factor folded in, laid out as ``backend`` wants them."""
    value: torch.Tensor
    mask: Any
    """``backend``'s mask (made once per job and resolution); None: every pixel sees every token."""
    backend: AttentionBackend[Any]


LayerInputs = tuple[GroupInputs, ...]
"""Every group of one cross-attention layer, in row order."""


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
    backend: AttentionBackend[Any] = field(default_factory=lambda: attention_backend(DEFAULT_ATTENTION))
    """How the masked groups attend (the engine's choice; unmasked groups always use
    :func:`~render_service.engine.backends.dense_backend`)."""
    bucket_tokens: bool = True
    """Pad masked token groups to a few buckets (for a compiled UNet) rather than only aligning them
    (eager: fewer masked tokens to attend over)."""
    mask_cache: dict[tuple[int, int, torch.dtype], list[tuple[Any, torch.Tensor]]] = field(default_factory=dict)

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
    ) -> list[tuple[Any, torch.Tensor]]:
        """Per group: (its mask, None when unmasked; its token scale ``(T_k,)``), cached per size."""
        key = (height, width, dtype)
        cached = self.mask_cache.get(key)
        if cached is None:
            covered, scale = self._coverage(height, width, device)
            cached = []
            for group in self.groups:
                conditions = group.conditions.to(device)
                mask = None
                if group.masked:
                    rows = group.rows.stop - group.rows.start
                    mask = self.backend.group_mask(covered, conditions, rows, dtype, self.bucket_tokens)
                cached.append((mask, scale[conditions]))
            self.mask_cache[key] = cached
        return cached

    def layer_inputs(
        self, attn: Attention, context: torch.Tensor, size: tuple[int, int], dtype: torch.dtype
    ) -> LayerInputs:
        """What one cross-attention layer needs at one resolution, per group (see :class:`GroupInputs`).

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
        for group, (mask, token_scale) in zip(self.groups, masks, strict=True):
            backend = self.backend if mask is not None else dense_backend()
            group_key, group_value = backend.layout(
                key[:, :, group.tokens], value[:, :, group.tokens], token_scale, attn.scale, mask
            )
            result.append(GroupInputs(group.rows.start, group.rows.stop, group_key, group_value, mask, backend))
        return tuple(result)

    def cross_attention_inputs(
        self, unet: UNet2DConditionModel, context: torch.Tensor, latent_size: tuple[int, int], dtype: torch.dtype
    ) -> dict[str, LayerInputs]:
        """:meth:`layer_inputs` of every cross-attention layer of ``unet`` for one latent size, by
        processor name: the ``regional`` entry of the UNet's ``cross_attention_kwargs``."""
        levels = len(unet.config["block_out_channels"])
        inputs = {}
        for name, module in unet.named_modules():
            if name.endswith("attn2") and isinstance(module, Attention):
                size = layer_size(latent_size, unet_level(name, levels))
                inputs[f"{name}.processor"] = self.layer_inputs(module, context[:1], size, dtype)
        return inputs


def stack_jobs(
    inputs: Sequence[dict[str, LayerInputs]], image_counts: Sequence[int], cfg: bool
) -> dict[str, LayerInputs]:
    """The :meth:`RegionalJob.cross_attention_inputs` of several jobs as the inputs of one UNet batch.

    Each job's own rows are ``[negative x images | positive x images]`` (positive only without CFG);
    the batch's rows are kind-major, ``[negatives of job 1, job 2, ... | positives of job 1, job 2,
    ...]``, so the sampling loop still splits CFG with one ``chunk(2)``. Every job keeps its own
    keys, values and masks, so a row sees only its own job's tokens. Adjacent unmasked groups with
    equal keys and values (jobs with the same negative prompt) become one attention call.
    """
    if len(inputs) != len(image_counts):
        raise ValueError(f"{len(inputs)} jobs but {len(image_counts)} image counts")
    if len(inputs) == 1:
        return inputs[0]
    total = sum(image_counts)
    stacked = {}
    for name in inputs[0]:
        groups: list[GroupInputs] = []
        offset = 0
        for job_inputs, count in zip(inputs, image_counts, strict=True):
            for group in job_inputs[name]:
                # A group never straddles the negative/positive boundary (RegionalJob checks it).
                shift = total + offset - count if cfg and group.start >= count else offset
                groups.append(group._replace(start=group.start + shift, stop=group.stop + shift))
            offset += count
        groups.sort(key=lambda group: group.start)
        merged: list[GroupInputs] = []
        for group in groups:
            if merged and _same_unmasked_text(merged[-1], group):
                merged[-1] = merged[-1]._replace(stop=group.stop)
            else:
                merged.append(group)
        stacked[name] = tuple(merged)
    return stacked


def _same_unmasked_text(before: GroupInputs, after: GroupInputs) -> bool:
    """Whether two adjacent groups can share one attention call: both unmasked, same keys and values."""
    if before.stop != after.start or before.mask is not None or after.mask is not None:
        return False
    return (
        before.key.shape == after.key.shape
        and torch.equal(before.key, after.key)
        and torch.equal(before.value, after.value)
    )


def mark_token_dims_dynamic(inputs: dict[str, LayerInputs]) -> None:
    """Tell ``torch.compile`` that token counts vary, so one graph serves every canvas (each group's
    backend knows which of its dimensions vary)."""
    for layer in inputs.values():
        for group in layer:
            group.backend.mark_dynamic(group.key, group.value, group.mask)


class RegionalSelfAttnProcessor(AttnProcessor2_0 if AttnProcessor2_0 is not None else object):  # type: ignore[misc]
    """Stock SDPA self-attention that accepts (and ignores) the ``regional`` inputs.

    diffusers hands every processor the same ``cross_attention_kwargs`` and logs a warning for each
    one a processor does not declare -- once per layer per step, and a graph break when compiled.
    """

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        regional: dict[str, LayerInputs] | None = None,
    ) -> torch.Tensor:
        out: torch.Tensor = super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return out


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

        outputs = [
            group.backend.attend(query[group.start : group.stop], group.key, group.value, group.mask)
            for group in groups
        ]
        out = outputs[0] if len(outputs) == 1 else torch.cat(outputs)

        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        assert isinstance(out, torch.Tensor)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_regional_processors(unet: UNet2DConditionModel) -> int:
    """Give every cross-attention layer (``attn2``) a regional processor; return how many.

    Self-attention layers get stock SDPA that tolerates the ``regional`` keyword.
    """
    processors: dict[str, Any] = dict(unet.attn_processors)
    count = 0
    for name in processors:
        if name.endswith("attn2.processor"):
            processors[name] = RegionalCrossAttnProcessor(name)
            count += 1
        else:
            processors[name] = RegionalSelfAttnProcessor()
    unet.set_attn_processor(processors)
    return count
