"""Omost's regions on Flux: masked joint attention, after Regional-Prompting-FLUX (arXiv 2411.02395).

Flux has no cross-attention: every block attends over one sequence ``[text tokens | image
tokens]``. The text sequence here is ``[global | region 1 | ... | region R]``: each condition of
:func:`shared.layout.layout_canvas` joined into one prompt and encoded by T5 at the same
``max_sequence_length`` (the global condition also gives the pooled CLIP vector, exactly as stock
``FluxPipeline`` does for a single prompt). Condition ``c`` covers image token ``p`` when its
90x90 grid mask, sampled nearest-exact at the token grid (image/16), is 1 there; the global
condition covers every token.

The joint mask ``A`` (query row → key column may attend), with ``cond(i)`` the condition of text
token ``i``:

- text ``i`` → text ``j``: ``cond(i) == cond(j)`` (each prompt sees only itself);
- text ``i`` → image ``p`` and image ``p`` → text ``i``: ``cond(i)`` covers ``p``
  (a region's pixels see their region's tokens and the global's, never another region's);
- image → image: always (the picture stays one picture).

Omost's area factor is carried over as the SDXL path has it: an image token's score for a text
token of condition ``c`` is multiplied by ``s_c = N / pixels(c)`` (``N`` image tokens; the global
condition's ``s`` is 1, and a condition that covers no token gets 1), so small regions are not
drowned by the global prompt; text rows' scores are not scaled. With ``S[i, j]`` that factor (1
elsewhere), attention is, per head, in exact arithmetic (:func:`reference_joint_attention`)::

    out_i = sum_j softmax_j( S[i, j] · q_i·k_j / sqrt(d)  if A[i, j]  else -inf ) v_j

Depth needs nothing here: conditions are laid out farthest to nearest as ``layout_canvas`` orders
them, and no pair of regions sees each other's tokens.

Regional-Prompting-FLUX's knobs (:class:`FluxRegionalOptions`): the mask is applied only in the
first ``regional_steps`` denoising steps and only in every ``double_interval``-th double-stream
and ``single_interval``-th single-stream block; elsewhere the attention is stock (unmasked over
all tokens). Where it is applied, image rows are blended with a base pass that sees only the
global prompt's text: ``out_img = base_ratio * base + (1 - base_ratio) * masked``.

The attention is computed by the job's joint-attention backend from the registry
(``OMOST_RENDER_ATTENTION``; :class:`~render_service.engine.backends.JointAttentionBackend`), its
mask built once per job before denoising. ``packed`` (the default) computes every allowed pair once
and no other in one variable-length call, with no dense mask: each condition's text rows against
its text and covered image tokens, the image rows against the image, and each condition's covered
image rows against its (area-scaled) text, the image rows' partials merged by log-sum-exp; the base
pass is the merge of the image and global partials alone. ``sdpa`` is the dense ``(S, S)`` mask of
:func:`joint_allowed` in three SDPA calls. Both equal :func:`reference_joint_attention`.

CPU bench (``bench/flux_bench.py``: tiny Flux [dev], 256², 10 steps, one thread, thread CPU time),
ours / stock at 1, 5, 12 conditions over three interleaved runs: dense mask 0.98-1.10 /
2.35-2.56 / 5.00-5.68, ``packed`` 0.92-0.99 / 1.48-2.15 / 3.01-3.58 (2-core VM at load 3.3-4.9
from other work; docs/render-engine.md). What remains is mostly
the steps and blocks outside the regional ones, where attention is stock over every region's tokens.

Not done yet: a FlexAttention block mask for the joint layout (``flex`` serves SDXL only). Each
region's prompt is ``region_tokens`` T5 tokens (default 128 in a job; the global one has the
model's ``max_sequence_length``, as stock).

Everything reaches the processors through ``joint_attention_kwargs={"regional": ...}``, diffusers'
own channel to attention processors, and the step count through ``callback_on_step_end``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from render_service.engine.backends import JointAttentionBackend, default_attention, joint_allowed, joint_backend
from shared.layout import CanvasLayout, Condition

__all__ = [
    "FluxRegionalAttnProcessor",
    "FluxRegionalInputs",
    "FluxRegionalOptions",
    "condition_prompt",
    "encode_layout",
    "install_flux_regional_processors",
    "joint_allowed",
    "reference_joint_attention",
    "render_regional_flux",
]


@dataclass(frozen=True)
class FluxRegionalOptions:
    """Regional-Prompting-FLUX's knobs; the defaults are the ones its examples use."""

    regional_steps: int = 10
    """How many first steps get the regional mask (their examples: 10 of 24; all 4 of [schnell])."""
    double_interval: int = 1
    """Every this-many-th double-stream block gets the mask (1: all)."""
    single_interval: int = 1
    """Every this-many-th single-stream block gets the mask (1: all)."""
    base_ratio: float = 0.2
    """Weight of the global-prompt-only pass in the image rows where the mask applies."""
    area_weighting: bool = True
    """Omost's area factor on image rows' scores for region tokens (see the module docstring)."""

    def __post_init__(self) -> None:
        if self.regional_steps < 0:
            raise ValueError(f"regional_steps must be >= 0; got {self.regional_steps}")
        for name in ("double_interval", "single_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        if not 0.0 <= self.base_ratio <= 1.0:
            raise ValueError(f"base_ratio must be in [0, 1]; got {self.base_ratio}")


def condition_prompt(condition: Condition) -> str:
    """One condition's prompt for T5: its prefixes then its suffixes (T5 reads long text, so no bags)."""
    return " ".join((*condition.prefixes, *condition.suffixes))


def reference_joint_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    allowed: torch.Tensor,
    score_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """The module docstring's formula in float64, ``(B, S, H, D)`` in and out (diffusers' layout);
    ``score_scale`` is ``S`` ``(S, S)`` (None: all ones)."""
    q, k, v = (t.to(torch.float64) for t in (query, key, value))
    scores = torch.einsum("bihd,bjhd->bhij", q, k) / q.shape[-1] ** 0.5
    if score_scale is not None:
        scores = scores * score_scale.to(scores)
    scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.einsum("bhij,bjhd->bihd", weights, v)


JointKernel = Callable[
    ["FluxRegionalInputs", torch.Tensor, torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor | None]
]


def joint_attention(
    regional: FluxRegionalInputs, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, base: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The job's masked joint attention over ``(B, S, H, D)`` tensors through its backend (chosen in
    the registry, never here): the masked output and, if ``base``, the base pass's image rows."""
    mask = regional.mask(query.device, query.shape[0])
    return regional.backend.joint_attend(query, key, value, mask, base)


def _joint_mask(
    backend: JointAttentionBackend[Any],
    token_condition: torch.Tensor,
    covered: torch.Tensor,
    key_scale: torch.Tensor | None,
    rows: int,
) -> Any:
    return backend.joint_mask(token_condition, covered, key_scale, rows)


# Data-dependent indexing on the CPU, once per job: run eagerly, never traced into a compiled graph
# (a compiled transformer that reaches it breaks the graph there instead).
_eager_joint_mask = cast(Callable[..., Any], torch.compiler.disable(_joint_mask))  # type: ignore[no-untyped-call]  # torch leaves it unannotated


@dataclass
class FluxRegionalInputs:
    """One job's regional state, handed to every processor as ``joint_attention_kwargs["regional"]``."""

    token_condition: torch.Tensor
    """(T,) long: each text token's condition."""
    covered: torch.Tensor | None
    """(C, N) bool: which image tokens each condition covers; None when there is only the global
    condition (stock attention)."""
    options: FluxRegionalOptions = field(default_factory=FluxRegionalOptions)
    key_scale: torch.Tensor | None = None
    """``(S,)``: the area factor image rows apply to each key's score (None: no factor)."""
    backend: JointAttentionBackend[Any] = field(default_factory=lambda: joint_backend(default_attention("joint")))
    """The registry's backend that computes the masked attention (``OMOST_RENDER_ATTENTION``)."""
    step: int = 0
    """The denoising step being run; advanced by :meth:`on_step_end`."""
    _masks: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        token_condition: torch.Tensor,
        covered: torch.Tensor,
        options: FluxRegionalOptions,
        backend: JointAttentionBackend[Any] | None = None,
    ) -> FluxRegionalInputs:
        chosen = backend if backend is not None else joint_backend(default_attention("joint"))
        if covered.shape[0] == 1:
            return cls(token_condition, None, options, backend=chosen)
        key_scale = None
        if options.area_weighting:
            pixels = covered.shape[1]
            area = covered.sum(dim=1).to(torch.float32)
            # A condition that covers no token is masked everywhere; 1 keeps it harmless.
            scale = torch.where(area > 0, pixels / area.clamp(min=1), torch.ones_like(area))
            key_scale = torch.cat([scale[token_condition], torch.ones(pixels)])
        return cls(token_condition, covered, options, key_scale=key_scale, backend=chosen)

    @property
    def text_length(self) -> int:
        return len(self.token_condition)

    def mask(self, device: torch.device, rows: int) -> Any:
        """The backend's mask for ``rows`` images on ``device``, built on first use and kept for the job
        (:meth:`prepare` builds it before the transformer runs)."""
        cached = self._masks.get((str(device), rows))
        return cached if cached is not None else self._build_mask(device, rows)

    def prepare(self, device: torch.device | str, rows: int) -> None:
        """Build the mask before denoising, so no transformer call (compiled or not) builds one."""
        if self.covered is not None:
            self.mask(torch.device(device), rows)

    def _build_mask(self, device: torch.device, rows: int) -> Any:
        assert self.covered is not None
        scale = None if self.key_scale is None else self.key_scale[: self.text_length]
        built = _eager_joint_mask(self.backend, self.token_condition, self.covered, scale, rows)
        mask = self._masks[(str(device), rows)] = self.backend.to(built, device)
        return mask

    @property
    def allowed(self) -> torch.Tensor | None:
        """The dense joint mask ``A`` ``(S, S)`` (for the reference; no backend gets it per call)."""
        return None if self.covered is None else joint_allowed(self.token_condition, self.covered)

    @property
    def base_allowed(self) -> torch.Tensor | None:
        """The base pass's dense mask: every row sees the global prompt's text and the image, nothing else."""
        if self.covered is None:
            return None
        sees = torch.cat([self.token_condition == 0, torch.ones(self.covered.shape[1], dtype=torch.bool)])
        return sees[None, :].expand(len(sees), -1).clone()

    def score_scale(self) -> torch.Tensor | None:
        """``S`` of the module docstring, ``(S, S)``: the reference's view of :attr:`key_scale`."""
        if self.key_scale is None:
            return None
        rows = torch.ones(len(self.key_scale), len(self.key_scale))
        rows[self.text_length :] = self.key_scale[None, :]
        return rows

    def applies(self, kind: str, index: int) -> bool:
        if self.covered is None or self.step >= self.options.regional_steps:
            return False
        interval = self.options.double_interval if kind == "double" else self.options.single_interval
        return index % interval == 0

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        """``FluxPipeline``'s ``callback_on_step_end``: the next step is ``step + 1``."""
        self.step = step + 1
        return {}


class FluxRegionalAttnProcessor:
    """Flux's stock attention processor with the regional mask where :meth:`FluxRegionalInputs.applies`.

    Projections, QK norms and rotary embeddings are diffusers' own (the same helpers
    ``FluxAttnProcessor`` uses); only the attention call differs. ``attend`` is the kernel
    (an attribute, so a test can spy on exactly what it is given).
    """

    def __init__(self, kind: str, index: int) -> None:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        self.kind = kind
        self.index = index
        self.stock = FluxAttnProcessor()
        self.attend: JointKernel = joint_attention

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        regional: FluxRegionalInputs | None = None,
    ) -> Any:
        if regional is None or not regional.applies(self.kind, self.index):
            return self.stock(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)  # type: ignore[arg-type]  # None is fine: single blocks pass none
        from diffusers.models.embeddings import apply_rotary_emb
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None and encoder_hidden_states is not None:
            encoder_query, encoder_key, encoder_value = (
                t.unflatten(-1, (-1, attn.head_dim)) for t in (encoder_query, encoder_key, encoder_value)
            )
            query = torch.cat([attn.norm_added_q(encoder_query), query], dim=1)
            key = torch.cat([attn.norm_added_k(encoder_key), key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        ratio = regional.options.base_ratio
        out, base = self.attend(regional, query, key, value, ratio > 0)
        if base is not None:
            # Only image rows are blended; the base pass sees no region token, so no area factor.
            text = regional.text_length
            out = torch.cat([out[:, :text], ratio * base + (1 - ratio) * out[:, text:]], dim=1)
        out = out.flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is not None:
            context, out = out.split_with_sizes(
                [encoder_hidden_states.shape[1], out.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            out = attn.to_out[1](attn.to_out[0](out.contiguous()))
            return out, attn.to_add_out(context.contiguous())
        return out


def install_flux_regional_processors(transformer: Any) -> int:
    """Give every attention of a ``FluxTransformer2DModel`` a regional processor; return how many."""
    processors: dict[str, Any] = {}
    for name in transformer.attn_processors:
        # "transformer_blocks.3.attn.processor" / "single_transformer_blocks.7.attn.processor"
        prefix, index = name.split(".")[:2]
        kind = "single" if prefix == "single_transformer_blocks" else "double"
        processors[name] = FluxRegionalAttnProcessor(kind, int(index))
    transformer.set_attn_processor(processors)
    return len(processors)


def token_coverage(layout: CanvasLayout, height: int, width: int) -> torch.Tensor:
    """``(C, N)`` bool: which image tokens (Flux packs 2x2 latents, so image/16) each condition covers."""
    rows, cols = height // 16, width // 16
    masks = [torch.from_numpy(c.mask(rows, cols)).flatten() > 0.5 for c in layout.conditions]
    return torch.stack(masks)


def encode_layout(
    pipe: Any, layout: CanvasLayout, *, max_sequence_length: int = 512, region_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(prompt_embeds (1, T, D), pooled (1, P), token_condition (T,))``: the global condition's T5
    tokens (``max_sequence_length`` of them) and CLIP pooled vector exactly as stock ``FluxPipeline``
    encodes one prompt, then every region's T5 tokens (``region_tokens`` each, default the same),
    all regions in one T5 batch."""
    prompts = [condition_prompt(c) for c in layout.conditions]
    device = pipe._execution_device
    with torch.no_grad():
        embeds, pooled, _ = pipe.encode_prompt(
            prompt=prompts[0], prompt_2=None, device=device, max_sequence_length=max_sequence_length
        )
        parts = [embeds]
        if len(prompts) > 1:
            # T5 runs without a padding mask in FluxPipeline, so a batch equals one call per prompt.
            regions = pipe._get_t5_prompt_embeds(
                prompt=prompts[1:], max_sequence_length=region_tokens or max_sequence_length, device=device
            )
            parts.append(regions.reshape(1, -1, regions.shape[-1]))
    regions = len(prompts) - 1
    lengths = [embeds.shape[1]] + ([parts[-1].shape[1] // regions] * regions if regions else [])
    token_condition = torch.arange(len(prompts)).repeat_interleave(torch.tensor(lengths))
    return torch.cat(parts, dim=1), pooled, token_condition


def render_regional_flux(
    pipe: Any,
    layout: CanvasLayout,
    *,
    height: int,
    width: int,
    options: FluxRegionalOptions | None = None,
    max_sequence_length: int = 512,
    region_tokens: int | None = None,
    attention: str | None = None,
    **pipe_kwargs: Any,
) -> Any:
    """Render ``layout`` with a ``FluxPipeline`` whose transformer has the regional processors.

    ``attention`` names the registry's backend (default: Flux's, ``packed``). Extra keyword
    arguments go to the pipeline (steps, guidance, generator, output type); the return value is
    the pipeline's. A ``callback_on_step_end`` given is called after ours.
    """
    if height % 16 or width % 16:
        raise ValueError(f"Flux sizes must be multiples of 16; got {width}x{height}")
    if {"negative_prompt", "negative_prompt_embeds", "true_cfg_scale"} & pipe_kwargs.keys():
        # The negative pass would run with the positive pass's joint mask over a different text length.
        raise ValueError("true CFG (a negative prompt) is not supported with regions on Flux yet")
    embeds, pooled, token_condition = encode_layout(
        pipe, layout, max_sequence_length=max_sequence_length, region_tokens=region_tokens
    )
    inputs = FluxRegionalInputs.build(
        token_condition, token_coverage(layout, height, width), options or FluxRegionalOptions(),
        joint_backend(attention or default_attention("joint")),
    )  # fmt: skip
    inputs.prepare(pipe._execution_device, pipe_kwargs.get("num_images_per_prompt") or 1)
    then = pipe_kwargs.pop("callback_on_step_end", None)

    def on_step_end(pipeline: Any, step: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
        inputs.on_step_end(pipeline, step, timestep, callback_kwargs)
        return then(pipeline, step, timestep, callback_kwargs) if then is not None else {}

    return pipe(
        prompt_embeds=embeds,
        pooled_prompt_embeds=pooled,
        height=height,
        width=width,
        joint_attention_kwargs={"regional": inputs},
        callback_on_step_end=on_step_end,
        max_sequence_length=max_sequence_length,
        **pipe_kwargs,
    )
