"""Both services' OpenAPI documents, checked by a real generator: ``openapi-python-client`` must
generate a client for each that imports and calls, with one module per operation named by a stable
operationId.

The generator pins its own (older) typer, so it lives in its own environment, not the project's:
``python -m venv ~/.cache/omost/oapc && ~/.cache/omost/oapc/bin/pip install 'openapi-python-client>=0.21'``
and point ``OMOST_OPENAPI_GENERATOR`` at its ``bin/openapi-python-client`` (or put it on PATH).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from planner_service.app import create_app as create_planner
from planner_service.settings import PlannerSettings
from render_service.app import create_app as create_render
from render_service.settings import RenderSettings

METHODS = {"get", "post", "put", "patch", "delete"}
IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")

# Gaps the generator reports today, each with where it is fixed; any other warning fails the test.
KNOWN_WARNINGS = {
    # The PNG route declares image/png with no schema; {"schema": {"type": "string", "format": "binary"}} in
    # render_service/api/renders.py lets the generator return the bytes.
    "render": ["Unsupported content_type image/png"],
}


def generator() -> str:
    found = os.environ.get("OMOST_OPENAPI_GENERATOR") or shutil.which("openapi-python-client")
    if not found:
        pytest.fail("openapi-python-client is not installed (see this module's docstring; scripts/test.sh installs it)")
    return found


@pytest.fixture(scope="module", params=["planner", "render"])
def spec(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    # The factories have no side effects until served, so the documents come without any service running.
    app = create_planner(PlannerSettings()) if request.param == "planner" else create_render(RenderSettings())
    return request.param, app.openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method, path, op) for path, item in document["paths"].items() for method, op in item.items()
            if method in METHODS]


def test_every_operation_has_a_unique_identifier_like_operation_id(spec: tuple[str, dict[str, Any]]) -> None:
    _, document = spec
    ids = [op.get("operationId") for _, _, op in operations(document)]
    assert all(ids), [f"{m} {p}" for m, p, op in operations(document) if not op.get("operationId")]
    assert len(ids) == len(set(ids)), ids
    assert all(IDENTIFIER.match(i) for i in ids), ids


def test_every_schema_is_named(spec: tuple[str, dict[str, Any]]) -> None:
    """Bodies and JSON answers refer to named components, so generated models get stable class names."""
    _, document = spec
    for method, path, op in operations(document):
        bodies = [op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")]
        for response in op["responses"].values():
            bodies.append(response.get("content", {}).get("application/json", {}).get("schema"))
        for schema in filter(None, bodies):
            if "properties" in schema:  # a free-form map (additionalProperties) needs no name
                pytest.fail(f"{method.upper()} {path}: an inline object schema has no name")
    for name in document.get("components", {}).get("schemas", {}):
        assert re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", name), name


def test_a_generated_client_imports_and_has_every_operation(
    spec: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    service, document = spec
    path = tmp_path / f"{service}.json"
    path.write_text(json.dumps(document))
    package = tmp_path / f"omost_{service}_client"
    # The generator formats with ruff when it finds it; the project's venv has it.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(
        [generator(), "generate", "--path", str(path), "--output-path", str(package), "--meta", "none"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if line.startswith("Cannot parse") or "WARNING" in line]
    unexpected = [w for w in warnings if "WARNING parsing" not in w
                  and not any(known in w for known in KNOWN_WARNINGS.get(service, []))]
    assert not unexpected, output

    ids = [op["operationId"] for _, _, op in operations(document)]
    # Import every generated module in a fresh interpreter, as an app that vendors the client would.
    check = (
        "import importlib, pathlib, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"root = pathlib.Path({str(package)!r})\n"
        "names = sorted(p.stem for p in (root / 'api').rglob('*.py') if p.stem != '__init__')\n"
        "for p in (root / 'api').rglob('*.py'):\n"
        f"    importlib.import_module('omost_{service}_client.'"
        " + '.'.join(p.relative_to(root).with_suffix('').parts))\n"
        f"client = importlib.import_module('omost_{service}_client').AuthenticatedClient('http://x', token='t')\n"
        "print(','.join(names))\n"
    )
    imported = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    generated = set(imported.stdout.strip().split(","))
    # The generator folds runs of "_" (FastAPI's default ids of path parameters have "__").
    assert generated == {re.sub("_+", "_", i) for i in ids}


def test_the_openai_routes_declare_their_errors() -> None:
    """Every error these routes send is in the document, with OpenAI's shape, so generated clients parse it.
    (The same check over every route waits for the services' shared problem-details errors.)"""
    document = create_planner(PlannerSettings()).openapi()
    expected = {"/v1/images/generations": {"400", "401", "422", "429", "500", "502", "503", "504"},
                "/v1/models": {"401", "500"}}
    for path, statuses in expected.items():
        for op in document["paths"][path].values():
            assert statuses <= set(op["responses"]), (path, sorted(op["responses"]))
            for status in statuses:
                schema = op["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/OpenAIErrorResponse"}
