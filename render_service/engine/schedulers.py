"""diffusers schedulers by the sampler names of ``shared.jobs.Sampler``."""

from __future__ import annotations

from typing import Any

from shared.jobs import DEFAULT_SAMPLER

SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    # Omost's sampler: DPM++ 2M with Karras sigmas.
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(sampler: str, base_config: Any) -> Any:
    """A fresh scheduler (they are stateful) built from the checkpoint's own noise schedule."""
    import diffusers

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)} (default {DEFAULT_SAMPLER})")
    class_name, overrides = SAMPLERS[sampler]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)
