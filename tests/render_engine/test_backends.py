"""The attention-backend registry: every backend registered once with its constraints, checked at startup,
and no module outside the registry choosing a kernel."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from render_service.engine import RenderEngine
from render_service.engine.backends import (
    ATTENTION_BACKENDS,
    DEFAULT_ATTENTION,
    AttentionBackend,
    AttentionConfigError,
    attention_backend,
    check_attention,
    default_attention,
    dense_backend,
    joint_backend,
)

ROOT = Path(__file__).resolve().parents[2]
REGISTRY = ROOT / "render_service" / "engine" / "backends"
SDXL = {"layout": "cross", "contiguous_condition_tokens": True}


def test_every_registered_backend_loads_and_names_itself() -> None:
    assert ATTENTION_BACKENDS == ("sdpa", "packed", "flex")
    for name in ATTENTION_BACKENDS:
        backend = attention_backend(name)
        assert isinstance(backend, AttentionBackend) and backend.name == name
    assert DEFAULT_ATTENTION == "sdpa" and dense_backend() is attention_backend("sdpa")
    # Each family's default when OMOST_RENDER_ATTENTION is unset: the fastest exact one for its layout.
    assert (default_attention("cross"), default_attention("joint")) == ("sdpa", "packed")
    assert joint_backend("packed") is attention_backend("packed") and joint_backend("sdpa") is dense_backend()
    with pytest.raises(AttentionConfigError, match="'flex' does not serve joint attention"):
        joint_backend("flex")


def test_constraints_are_checked_and_say_what_to_change() -> None:
    cpu = {"device": "cpu", "dtype": torch.float32}
    for name in ("sdpa", "packed"):
        for compiled in (False, True):
            assert check_attention(name, compiled=compiled, **cpu, **SDXL).name == name
    assert check_attention("flex", compiled=True, **cpu, **SDXL).name == "flex"
    with pytest.raises(AttentionConfigError, match=r"only in a compiled UNet.*choose sdpa or packed"):
        check_attention("flex", compiled=False, **cpu, **SDXL)
    with pytest.raises(AttentionConfigError, match="runs on cpu, cuda, and the engine is on mps"):
        check_attention("flex", device="mps", dtype=torch.float16, compiled=True, **SDXL)
    flux = {"layout": "joint", "contiguous_condition_tokens": True}
    for name in ("sdpa", "packed"):
        assert check_attention(name, compiled=False, **cpu, **flux).name == name
    with pytest.raises(AttentionConfigError, match="this model family's is joint"):
        check_attention("flex", compiled=True, **cpu, **flux)
    with pytest.raises(AttentionConfigError, match="tokens side by side"):
        check_attention("packed", compiled=False, **cpu, layout="cross", contiguous_condition_tokens=False)
    with pytest.raises(AttentionConfigError, match="one of sdpa, packed, flex; got 'dense'"):
        check_attention("dense", compiled=False, **cpu, **SDXL)


def test_load_refuses_a_backend_before_loading_the_model() -> None:
    """The check comes first: a misconfigured worker fails in a second, not after a model download."""
    with pytest.raises(AttentionConfigError, match="flex"):
        RenderEngine.load("/nonexistent/model", device="cpu", attention="flex")
    with pytest.raises(ValueError, match="model family must be one of sdxl, flux; got 'sd3'"):
        RenderEngine.load("/nonexistent/model", device="cpu", family="sd3")
    with pytest.raises(AttentionConfigError, match="this model family's is joint"):
        RenderEngine.load("/nonexistent/model", device="cpu", family="flux")


def test_a_worker_with_an_unfit_backend_stops_at_start_with_the_reason(tmp_path: Path) -> None:
    env = {**os.environ, "OMOST_RENDER_MODEL": "/nonexistent/model", "OMOST_RENDER_DEVICE": "cpu",
           "OMOST_RENDER_ATTENTION": "flex", "OMOST_RENDER_COMPILE": "false"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "render_service.worker"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "attention backend cannot run here" in result.stderr and "OMOST_RENDER_COMPILE" in result.stderr


def test_the_registry_loads_without_torch() -> None:
    """The API process validates OMOST_RENDER_ATTENTION with the settings, and never imports torch."""
    code = "import sys, render_service.settings; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stdout + result.stderr


# ------------------------------------------------------------- no module outside the registry names a kernel


def kernel_names(source: str) -> list[tuple[int, str]]:
    """(line, name) of every string literal equal to a registered backend's name, docstrings aside:
    naming a kernel is how a module would choose one without importing it."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in ATTENTION_BACKENDS and id(node) not in docstrings
    ]


def test_the_check_finds_a_planted_kernel_name() -> None:
    planted = '"""A module that mentions sdpa in its docstring only."""\nbackend = attention_backend("packed")\n'
    assert kernel_names(planted) == [(2, "packed")]
    assert kernel_names('def f():\n    """flex"""\n    return 1\n') == []


def test_no_module_outside_the_registry_names_a_kernel() -> None:
    found = {
        str(path.relative_to(ROOT)): names
        for path in sorted((ROOT / "render_service").rglob("*.py"))
        if REGISTRY not in path.parents and (names := kernel_names(path.read_text(encoding="utf-8")))
    }
    assert not found, f"choose kernels only in {REGISTRY.relative_to(ROOT)}: {found}"
