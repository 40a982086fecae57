"""Only ``shared/queue/`` names a job's Redis keys or its record's fields: every other module of the
services and of shared reads and writes jobs through :class:`shared.queue.RenderQueue` (and the worker
through :class:`shared.queue.SyncRenderQueue` and the transitions).

An AST scan, shown able to fail: each kind of bypass it knows, planted in a scratch module, is reported.
Tests may poke at Redis as "any client" would and are not scanned.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shared.queue import Rec

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("planner_service", "render_service", "shared")
REPOSITORY = ROOT / "shared" / "queue"
FIELDS = {value for name, value in vars(Rec).items() if name.isupper()}
JOB_KEY_METHODS = {"job", "events", "image", "idempotency", "owner_index"}
"""The :class:`shared.queue.QueueKeys` methods that build the key of one job (or of its index)."""
HASH_COMMANDS = {"hget", "hset", "hmget", "hexists", "hdel", "hgetall", "hincrby", "hsetnx"}
KEY_FRAGMENTS = ("render:", "render-index:")


def _receiver_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _receiver_name(node.func)
    return ""


def _field(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and node.value in FIELDS else None


def _spells_key(text: str) -> bool:
    """A job key's fixed part at the start of a string piece (an f-string's ``{prefix}render:{id}``)."""
    return any(text.startswith(fragment) or f"}}{fragment}" in text for fragment in KEY_FRAGMENTS)


def violations(source: str, name: str) -> list[str]:
    """Where ``source`` names a job key or a record field, as ``name:line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared.queue"):
            if any(alias.name == "Rec" for alias in node.names):
                found.append(f"{name}:{line}: imports the record's field names (Rec)")
        elif isinstance(node, ast.Attribute) and node.attr == "Rec":
            found.append(f"{name}:{line}: uses the record's field names (Rec)")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method, receiver = node.func.attr, _receiver_name(node.func.value)
            if method in JOB_KEY_METHODS and receiver.lower().endswith("keys"):
                found.append(f"{name}:{line}: builds a job key ({receiver}.{method})")
            elif method in HASH_COMMANDS:
                named = [f for arg in node.args for f in [_field(arg)] if f]
                named += [f for kw in node.keywords if isinstance(kw.value, ast.Dict)
                          for k in kw.value.keys if k is not None for f in [_field(k)] if f]  # fmt: skip
                if named:
                    found.append(f"{name}:{line}: {method} of record field {named[0]!r}")
            elif method == "get" and "record" in receiver.lower() and node.args and _field(node.args[0]):
                found.append(f"{name}:{line}: reads record field {_field(node.args[0])!r}")
        elif isinstance(node, ast.Subscript) and "record" in _receiver_name(node.value).lower():
            if _field(node.slice):
                found.append(f"{name}:{line}: reads record field {_field(node.slice)!r}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _spells_key(node.value):
            found.append(f"{name}:{line}: spells a job key ({node.value!r})")
    return found


def _scanned_modules() -> list[Path]:
    paths = [path for package in SCANNED for path in sorted((ROOT / package).rglob("*.py"))]
    return [path for path in paths if REPOSITORY not in path.parents]


def test_no_module_outside_the_repository_names_a_job_key_or_a_record_field() -> None:
    modules = _scanned_modules()
    assert len(modules) > 50 and any(p.name == "renders.py" for p in modules)  # the scan sees the services
    found = [v for path in modules for v in violations(path.read_text(), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_repository_itself_is_where_they_are_named() -> None:
    """The scan would flag the repository: it is excluded, not blind."""
    found = [v for path in sorted(REPOSITORY.glob("*.py")) for v in violations(path.read_text(), path.name)]
    assert any("repository.py" in v for v in found) and any("transitions.py" in v for v in found)


BYPASSES = [
    pytest.param("from shared.queue import Rec\n", "imports the record's field names", id="import Rec"),
    pytest.param("import shared.queue.record as r\nr.Rec.STATUS\n", "uses the record's field names", id="Rec attr"),
    pytest.param("async def f(client, keys, i):\n    await client.hgetall(keys.job(i))\n", "builds a job key",
                 id="keys.job"),
    pytest.param("def f(self, i):\n    return self.settings.keys.image(i, 0)\n", "builds a job key",
                 id="settings.keys.image"),
    pytest.param("async def f(c, k):\n    await c.hget(k, 'status')\n", "hget of record field 'status'", id="hget"),
    pytest.param("def f(c, k):\n    c.hset(k, mapping={'webhook_status': 'x'})\n", "hset of record field",
                 id="hset mapping"),
    pytest.param("def f(record):\n    return record.get('num_images')\n", "reads record field 'num_images'",
                 id="record.get"),
    pytest.param("def f(record):\n    return record['submitter']\n", "reads record field 'submitter'",
                 id="record subscript"),
    pytest.param("def f(prefix, i):\n    return f'{prefix}render:{i}'\n", "spells a job key", id="f-string key"),
]


@pytest.mark.parametrize(("source", "expected"), BYPASSES)
def test_each_bypass_is_reported(source: str, expected: str) -> None:
    found = violations(source, "planted.py")
    assert len(found) == 1 and expected in found[0], found


def test_reading_a_job_through_the_repository_is_not_reported() -> None:
    source = (
        "async def f(queue, job_id, hub, body):\n"
        "    record = await queue.read(job_id)\n"
        "    events = hub.events(job_id)\n"
        "    return record.status, record.submitter, body['error'], events\n"
    )
    assert violations(source, "fine.py") == []
