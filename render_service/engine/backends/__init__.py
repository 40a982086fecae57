"""The attention backends, registered once: name -> the module that implements it + its constraints.

Modelled on diffusers' ``attention_dispatch.py``. A backend is how the masked (positive) rows of a
cross-attention attend to their regions' tokens: the mask it builds once per job and resolution,
the layout of the keys it wants, and the kernel call. A backend that also serves the ``joint``
layout (a DiT such as Flux: text and image tokens in one attention) implements
:class:`JointAttentionBackend` too, on the same object under the same name. Each backend is one module of this package
with a ``BACKEND`` object (an :class:`AttentionBackend`) and one :func:`_register` line below; the
engine asks :func:`check_attention` for the one a setting names and never picks a kernel itself
(an import rule keeps the kernel modules private to this package; tests/shared/test_import_rules.py
shows it can fail).

Importing this module is cheap (no torch): the settings validate ``OMOST_RENDER_ATTENTION`` against
:data:`ATTENTION_BACKENDS` in the API process too. The kernel modules load on first use.
"""

from __future__ import annotations

import functools
import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = [
    "ATTENTION_BACKENDS",
    "DEFAULT_ATTENTION",
    "AttentionBackend",
    "AttentionConfigError",
    "Constraints",
    "JointAttentionBackend",
    "attention_backend",
    "check_attention",
    "default_attention",
    "dense_backend",
    "joint_allowed",
    "joint_backend",
]

MaskT = TypeVar("MaskT")
JointMaskT = TypeVar("JointMaskT")


class AttentionBackend(ABC, Generic[MaskT]):
    """One way for a group of rows to attend to its tokens. Everything a method returns is a tensor
    or a tuple of tensors, so a compiled UNet takes it as an input and one graph serves every canvas.

    Shapes: a group's query rows are ``(R, heads, N, d)`` (R rows of the UNet batch, N pixels);
    keys and values come in as ``(1, heads, T, d)`` (every row of a group sees the same tokens).
    """

    name: str

    @abstractmethod
    def group_mask(
        self, covered: torch.Tensor, conditions: torch.Tensor, rows: int, dtype: torch.dtype, bucket_tokens: bool
    ) -> MaskT:
        """The mask of a masked group at one resolution: ``covered`` (C, N) bool, which pixels each
        condition covers; ``conditions`` (T,) each of the group's tokens' condition; ``rows`` rows of
        the batch; ``bucket_tokens``: pad token counts to a few buckets (compiled UNets)."""

    @abstractmethod
    def layout(
        self, key: torch.Tensor, value: torch.Tensor, token_scale: torch.Tensor, softmax_scale: float, mask: MaskT
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The group's keys (each token's factor and the softmax scale folded in) and values, laid
        out and padded as :meth:`attend` takes them."""

    @abstractmethod
    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: MaskT) -> torch.Tensor:
        """The attention of ``query`` ``(R, heads, N, d)``; returns ``(R, heads, N, d)``."""

    def mark_dynamic(self, key: torch.Tensor, value: torch.Tensor, mask: MaskT) -> None:
        """Tell ``torch.compile`` which dimensions vary with the canvas (token counts, conditions)."""


class JointAttentionBackend(ABC, Generic[JointMaskT]):
    """Masked joint attention (text and image tokens in one sequence, Flux): the rules are
    :func:`joint_allowed`'s, the formula ``reference_joint_attention``'s in
    :mod:`render_service.engine.flux_regional`. The mask is built once per job, device and batch
    size; no backend builds a dense mask per head.
    """

    name: str

    @abstractmethod
    def joint_mask(
        self, token_condition: torch.Tensor, covered: torch.Tensor, key_scale: torch.Tensor | None, rows: int
    ) -> JointMaskT:
        """The mask of a job: ``token_condition`` (T,) long, each text token's condition (a condition's
        tokens side by side, condition 0 the global one, which covers every image token); ``covered``
        (C, N) bool, which image tokens each condition covers; ``key_scale`` (T,) the factor an image
        row's score for each text token is multiplied by (None: none); ``rows`` the batch size."""

    @abstractmethod
    def joint_attend(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: JointMaskT, base: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``query``, ``key``, ``value`` ``(rows, T + N, heads, d)`` (diffusers' layout, text first),
        softmax scale ``1/sqrt(d)``. Returns the masked attention ``(rows, T + N, heads, d)`` and, if
        ``base``, the base pass of the image rows ``(rows, N, heads, d)``: each image row over the
        global condition's text and every image token, no factor (else None)."""

    def to(self, mask: JointMaskT, device: torch.device) -> JointMaskT:
        """``mask`` on ``device``: a mask is built on the CPU once per job; this default moves every
        tensor of a ``NamedTuple`` mask and keeps its other fields."""
        import torch

        if not isinstance(mask, tuple):
            raise TypeError(f"{type(self).__name__} must say how to move a {type(mask).__name__}")
        moved = (item.to(device) if isinstance(item, torch.Tensor) else item for item in mask)
        return type(mask)(*moved)


def joint_allowed(token_condition: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    """The joint mask ``A`` of :mod:`render_service.engine.flux_regional`, ``(T + N, T + N)`` bool (the
    rule every joint backend implements; dense, for the ``sdpa`` backend and the reference).

    ``token_condition`` ``(T,)`` long: each text token's condition; ``covered`` ``(C, N)`` bool:
    which image tokens each condition covers.
    """
    import torch

    text_covers = covered[token_condition]  # (T, N)
    top = torch.cat([token_condition[:, None] == token_condition[None, :], text_covers], dim=1)
    pixels = covered.shape[1]
    bottom = torch.cat([text_covers.T, torch.ones(pixels, pixels, dtype=torch.bool, device=covered.device)], dim=1)
    return torch.cat([top, bottom], dim=0)


@dataclass(frozen=True)
class Constraints:
    """Where a backend can run; :func:`check_attention` refuses the others at startup."""

    devices: frozenset[str] | None = None
    """Device types (``cuda``, ``cpu``, ``mps``) it runs on; None: any."""
    dtypes: frozenset[str] | None = None
    """Model dtypes (``float16``, ``bfloat16``, ``float32``); None: any."""
    compiled: Literal["either", "only", "never"] = "either"
    """Whether it needs a ``torch.compile``-d UNet (``only``), cannot run in one (``never``) or both."""
    contiguous_condition_tokens: bool = False
    """It needs each condition's tokens side by side in the text sequence (one sequence each)."""
    layouts: frozenset[str] = frozenset({"cross"})
    """The attention layouts of model families it serves: ``cross`` (text tokens in separate
    cross-attention layers, SDXL's UNet) or ``joint`` (text and image tokens in one attention, a DiT)."""


class AttentionConfigError(ValueError):
    """The chosen backend cannot run on this engine (device, dtype, compile mode, model family)."""


@dataclass(frozen=True)
class _Registration:
    module: str
    constraints: Constraints


_REGISTRY: dict[str, _Registration] = {}


def _register(name: str, module: str, constraints: Constraints) -> None:
    """Register backend ``name``: ``BACKEND`` of this package's ``module``, runnable where ``constraints`` hold."""
    if name in _REGISTRY:
        raise ValueError(f"attention backend {name!r} is registered twice")
    _REGISTRY[name] = _Registration(f"{__name__}.{module}", constraints)


# One masked scaled_dot_product_attention call over all of a job's tokens (SDXL's default); on Flux
# the dense (S, S) joint mask.
_register("sdpa", "sdpa", Constraints(layouts=frozenset({"cross", "joint"})))
# Only the pixel-token pairs a region allows: one variable-length sequence per condition
# (FlashAttention's varlen kernel on CUDA in fp16/bf16, a reference kernel elsewhere); on Flux
# every allowed pair once, in one varlen call (Flux's default).
_register("packed", "packed", Constraints(contiguous_condition_tokens=True, layouts=frozenset({"cross", "joint"})))
# FlexAttention with a block mask that skips blocks no pixel sees; inductor generates its kernel.
_register("flex", "flex", Constraints(devices=frozenset({"cuda", "cpu"}), compiled="only"))

ATTENTION_BACKENDS: tuple[str, ...] = tuple(_REGISTRY)
"""Every registered backend's name, in registration order."""
DEFAULT_ATTENTION = "sdpa"
"""The default of a ``cross`` family (SDXL); see :func:`default_attention`."""
_DEFAULT_BY_LAYOUT = {"cross": DEFAULT_ATTENTION, "joint": "packed"}
UNMASKED = "sdpa"
"""The backend of unmasked groups (the negative prompt's rows see all of their tokens), whichever
backend the masked groups use: one plain SDPA call is the fastest kernel there."""


def _known(name: str) -> str:
    if name not in _REGISTRY:
        raise AttentionConfigError(f"attention must be one of {', '.join(ATTENTION_BACKENDS)}; got {name!r}")
    return name


@functools.cache
def attention_backend(name: str) -> AttentionBackend[Any]:
    """The backend registered as ``name`` (its module is imported on first use)."""
    registration = _REGISTRY[_known(name)]
    backend = importlib.import_module(registration.module).BACKEND
    if not isinstance(backend, AttentionBackend) or backend.name != name:
        raise TypeError(f"{registration.module}.BACKEND is not the {name!r} AttentionBackend")
    return backend


def default_attention(layout: str) -> str:
    """The backend a family of this attention ``layout`` uses when none is chosen: the fastest exact
    one measured (``sdpa`` for SDXL's cross-attention, ``packed`` for Flux's joint attention)."""
    return _DEFAULT_BY_LAYOUT[layout]


def joint_backend(name: str) -> JointAttentionBackend[Any]:
    """Backend ``name`` as a joint-attention backend (:class:`AttentionConfigError` if it serves none)."""
    if "joint" not in _REGISTRY[_known(name)].constraints.layouts:
        raise AttentionConfigError(f"attention backend {name!r} does not serve joint attention")
    backend = attention_backend(name)
    if not isinstance(backend, JointAttentionBackend):
        raise TypeError(f"{_REGISTRY[name].module}.BACKEND declares the joint layout and does not implement it")
    return backend


def dense_backend() -> AttentionBackend[Any]:
    """The backend every unmasked group uses (see :data:`UNMASKED`)."""
    return attention_backend(UNMASKED)


def check_attention(
    name: str,
    *,
    device: str,
    dtype: torch.dtype,
    compiled: bool,
    layout: str,
    contiguous_condition_tokens: bool,
) -> AttentionBackend[Any]:
    """Backend ``name`` if its constraints hold on this engine, else :class:`AttentionConfigError`
    saying which one does not and what to change. ``layout`` and ``contiguous_condition_tokens`` are
    the model family's (:mod:`render_service.engine.families`)."""
    rule = _REGISTRY[_known(name)].constraints
    device_type = device.split(":")[0]
    dtype_name = str(dtype).removeprefix("torch.")
    others = [other for other, reg in _REGISTRY.items() if other != name and reg.constraints.compiled != "only"]
    problems = []
    if rule.devices is not None and device_type not in rule.devices:
        problems.append(f"it runs on {', '.join(sorted(rule.devices))}, and the engine is on {device_type}")
    if rule.dtypes is not None and dtype_name not in rule.dtypes:
        problems.append(f"it runs in {', '.join(sorted(rule.dtypes))}, and the model is {dtype_name}")
    if rule.compiled == "only" and not compiled:
        problems.append(
            "it runs only in a compiled UNet: turn compile on (OMOST_RENDER_COMPILE=true, RenderEngine.load("
            f"compile=True)) or choose {' or '.join(others)}"
        )
    if rule.compiled == "never" and compiled:
        problems.append("it cannot run in a compiled UNet: turn compile off")
    if layout not in rule.layouts:
        problems.append(f"it serves {', '.join(sorted(rule.layouts))} attention, and this model family's is {layout}")
    if rule.contiguous_condition_tokens and not contiguous_condition_tokens:
        problems.append("it needs each condition's tokens side by side, and this model family interleaves them")
    if problems:
        raise AttentionConfigError(f"attention backend {name!r} cannot run here: " + "; ".join(problems))
    return attention_backend(name)
