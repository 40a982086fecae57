"""The layering rules in pyproject.toml's ``[tool.importlinter]``: each can fail, and no module escapes them.

``scripts/test.sh`` runs ``lint-imports`` on the real tree. These tests show that the rules are not vacuous:
on a scratch tree made of empty modules with the configured names, the rules hold, and one planted import
of each forbidden kind breaks the rule it should. The scratch tree also carries the imports a contract
lists under ``ignore_imports``, since import-linter rejects an ignore that matches nothing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - mypy's own dependency on Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

FACE_MODULES = {"shared.cli", "shared.client", "shared.service"}
"""The parts of shared that sit on top of the contract: the terminal face, the HTTP client, the service kit."""


def _config() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]


def _contract(contract_id: str) -> dict[str, Any]:
    (found,) = [c for c in _config()["contracts"] if c["id"] == contract_id]
    return found


WILDCARD_STAND_IN = "member"
"""A module put in the scratch tree for a contract's ``package.*``, so the wildcard matches something."""


def _internal_names(config: dict[str, Any]) -> set[str]:
    """Every module of the root packages that a contract names, so the scratch tree can hold them all."""
    roots = tuple(config["root_packages"])
    names: set[str] = set(roots)
    for contract in config["contracts"]:
        for key in ("source_modules", "forbidden_modules", "modules", "protected_modules", "allowed_importers"):
            names.update(name.replace("*", WILDCARD_STAND_IN) for name in contract.get(key, []))
        for ignored in contract.get("ignore_imports", []):
            names.update(part.strip() for part in ignored.split("->"))
    return {name for name in names if name.split(".")[0] in roots}


def _scratch_tree(root: Path, imports: list[tuple[str, str]]) -> None:
    """Empty packages for every configured module, then ``importer`` imports ``imported`` for each pair."""
    config = _config()
    planted = [*imports]
    for contract in config["contracts"]:
        for ignored in contract.get("ignore_imports", []):
            importer, imported = (part.strip() for part in ignored.split("->"))
            planted.append((importer, imported))
    roots = tuple(config["root_packages"])
    internal = {imported for _, imported in planted if imported.split(".")[0] in roots}
    names = _internal_names(config) | {importer for importer, _ in planted} | internal
    for name in names:
        # Every module is a package: a name can then be both a module and the parent of others.
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            package = root.joinpath(*parts[:depth])
            package.mkdir(exist_ok=True)
            (package / "__init__.py").touch()
    for importer, imported in planted:
        init = root.joinpath(*importer.split("."), "__init__.py")
        init.write_text(init.read_text() + f"import {imported}\n")
    (root / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _lint(root: Path, contract_id: str | None = None) -> subprocess.CompletedProcess[str]:
    command = [str(LINT_IMPORTS), "--no-cache"]  # reads the pyproject.toml in its working directory
    if contract_id:
        command += ["--contract", contract_id]
    # PYTHONPATH names only the scratch tree, so the real packages (installed editable) are not the ones analysed.
    return subprocess.run(
        command, cwd=root, env={"PYTHONPATH": str(root), "PATH": ""}, capture_output=True, text=True, timeout=60
    )


def test_the_rules_hold_on_a_tree_without_forbidden_imports(tmp_path: Path) -> None:
    _scratch_tree(tmp_path, [])
    result = _lint(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_config()['contracts'])} kept, 0 broken" in result.stdout


VIOLATIONS = [
    pytest.param("contract-is-a-leaf", "shared.canvas", "torch", id="contract imports torch"),
    pytest.param("contract-is-a-leaf", "shared.queue", "fastapi", id="contract imports fastapi"),
    pytest.param("contract-is-a-leaf", "shared.jobs", "starlette.responses", id="contract imports starlette"),
    pytest.param("contract-is-a-leaf", "shared.plans", "uvicorn", id="contract imports uvicorn"),
    pytest.param("contract-is-a-leaf", "shared.layout", "diffusers", id="contract imports diffusers"),
    pytest.param("contract-is-a-leaf", "shared.prompts", "typer", id="contract imports typer"),
    pytest.param("contract-is-a-leaf", "shared.omost_code", "rich.console", id="contract imports rich"),
    pytest.param("contract-is-a-leaf", "shared.grammar", "shared.cli", id="contract imports the cli"),
    pytest.param("contract-is-a-leaf", "shared.contract", "shared.client", id="contract imports the client"),
    pytest.param("contract-is-a-leaf", "shared.canvas", "planner_service", id="contract imports the planner"),
    pytest.param("contract-is-a-leaf", "shared.jobs", "render_service.engine", id="contract imports the renderer"),
    pytest.param("shared-imports-no-service", "shared.cli.stack", "planner_service", id="cli imports the planner"),
    pytest.param("shared-imports-no-service", "shared.client", "render_service.api", id="client imports the renderer"),
    pytest.param("services-independent", "planner_service.service", "render_service", id="planner imports renderer"),
    pytest.param("services-independent", "render_service.store", "planner_service", id="renderer imports planner"),
    pytest.param(
        "render-api-not-worker", "render_service.api.health", "render_service.worker", id="api imports the worker"
    ),
    pytest.param(
        "kernels-behind-registry", "render_service.engine.engine", "render_service.engine.backends.packed",
        id="engine picks a kernel",
    ),
    pytest.param(
        "kernels-behind-registry", "render_service.engine.attention", "render_service.engine.backends.flex",
        id="attention picks a kernel",
    ),
    pytest.param(
        "kernels-behind-registry", "render_service.worker.core", "render_service.engine.backends.sdpa",
        id="worker picks a kernel",
    ),
]


@pytest.mark.parametrize(("contract_id", "importer", "imported"), VIOLATIONS)
def test_a_planted_import_breaks_its_rule(tmp_path: Path, contract_id: str, importer: str, imported: str) -> None:
    _scratch_tree(tmp_path, [(importer, imported)])
    result = _lint(tmp_path, contract_id)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "0 kept, 1 broken" in result.stdout
    # The report names the planted line; an external package shows as its top-level name.
    internal = imported.split(".")[0] in _config()["root_packages"]
    assert f" {importer} -> {imported if internal else imported.split('.')[0]} (l.1)" in result.stdout


def test_an_indirect_import_breaks_the_rule_too(tmp_path: Path) -> None:
    """A contract module reaching torch through a helper is as heavy as importing it itself."""
    _scratch_tree(tmp_path, [("shared.canvas", "shared.helper"), ("shared.helper", "torch")])
    result = _lint(tmp_path, "contract-is-a-leaf")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "shared.canvas -> shared.helper" in result.stdout


def test_an_import_inside_a_function_counts(tmp_path: Path) -> None:
    """Deferring an import to call time still makes the contract depend on the library."""
    _scratch_tree(tmp_path, [])
    init = tmp_path / "shared" / "prompts" / "__init__.py"
    init.write_text("def pack():\n    import torch\n    return torch\n")
    result = _lint(tmp_path, "contract-is-a-leaf")
    assert result.returncode == 1, result.stdout + result.stderr


def test_every_module_of_shared_is_either_contract_or_face() -> None:
    """A new module of shared must be classified, so a new pure module cannot slip past the leaf rule."""
    leaf = _contract("contract-is-a-leaf")
    contract_modules = set(leaf["source_modules"])
    children = {
        f"shared.{path.stem if path.is_file() else path.name}"
        for path in (ROOT / "shared").iterdir()
        if (path.suffix == ".py" and path.name not in {"__init__.py", "__main__.py"}) or (path / "__init__.py").exists()
    }
    unclassified = children - contract_modules - FACE_MODULES
    assert not unclassified, f"add {sorted(unclassified)} to contract-is-a-leaf's source_modules or to FACE_MODULES"
    assert not contract_modules & FACE_MODULES
    missing = sorted(name for name in FACE_MODULES & children if name not in leaf["forbidden_modules"])
    assert not missing, f"add {missing} to contract-is-a-leaf's forbidden_modules"
