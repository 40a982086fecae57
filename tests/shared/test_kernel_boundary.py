"""Only ``render_service/engine/backends`` calls an attention kernel: every other module hands the
attention inputs to the backend the registry chose (``OMOST_RENDER_ATTENTION``). ``lint-imports``'
``kernels-behind-registry`` contract keeps the backend modules from being imported elsewhere; this
AST scan covers what an import rule cannot see, torch's kernels named directly (``F.scaled_dot_product_attention``,
``flex_attention``, ``varlen_attn``, an ``sdpa_kernel`` choice). Shown able to fail: each planted call is reported.

Reads the sources only (no torch import), so it costs milliseconds.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("render_service", "planner_service", "shared")
REGISTRY = ROOT / "render_service" / "engine" / "backends"
KERNELS = frozenset({
    "scaled_dot_product_attention", "flex_attention", "create_block_mask", "varlen_attn", "sdpa_kernel",
    "flash_attn_func", "flash_attn_varlen_func", "memory_efficient_attention",
})  # fmt: skip
"""torch's attention kernels (and the one to choose among SDPA's), FlashAttention's and xformers'."""


def violations(source: str, name: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in KERNELS:
            found.append(f"{name}:{node.lineno}: calls the kernel {node.attr}")
        elif isinstance(node, ast.Name) and node.id in KERNELS:
            found.append(f"{name}:{node.lineno}: calls the kernel {node.id}")
        elif isinstance(node, ast.ImportFrom) and any(alias.name in KERNELS for alias in node.names):
            found.append(f"{name}:{node.lineno}: imports a kernel from {node.module}")
    return found


def test_no_module_outside_the_registry_calls_a_kernel() -> None:
    paths = [p for package in SCANNED for p in sorted((ROOT / package).rglob("*.py")) if REGISTRY not in p.parents]
    assert any(p.name == "attention.py" for p in paths) and any(p.name == "engine.py" for p in paths)
    assert [v for p in paths for v in violations(p.read_text(), str(p.relative_to(ROOT)))] == []


def test_the_registry_is_where_kernels_are_called() -> None:
    """The scan would flag the backends: they are excluded, not invisible to it."""
    found = [v for p in sorted(REGISTRY.glob("*.py")) for v in violations(p.read_text(), p.name)]
    assert {v.split(":")[0] for v in found} >= {"sdpa.py", "flex.py", "packed.py"}


@pytest.mark.parametrize(
    "source",
    [
        "import torch.nn.functional as F\ndef f(q, k, v):\n    return F.scaled_dot_product_attention(q, k, v)\n",
        "from torch.nn.attention.flex_attention import flex_attention\n",
        "import torch\ndef f(q, k, v):\n    return torch.nn.attention.varlen.varlen_attn(q, k, v)\n",
        "from torch.nn.attention import SDPBackend, sdpa_kernel\n",
    ],
    ids=["sdpa", "flex import", "varlen", "sdpa_kernel"],
)
def test_a_planted_kernel_call_is_reported(source: str) -> None:
    assert violations(source, "planted.py"), source
