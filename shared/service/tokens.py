"""The credentials a service accepts: the comma-separated ``*_API_TOKEN`` and the named tokens of
``*_API_TOKENS_FILE``, each named token with its own quotas.

The file is JSON, one entry per client::

    {"tokens": {"alice": {"tokens": ["a-long-random-secret"],
                          "megapixel_steps_per_hour": 2000, "max_concurrent_jobs": 4}}}

``tokens`` lists the client's secrets (several during a rotation: old and new both work);
``megapixel_steps_per_hour`` bounds the work it queues in any rolling hour and
``max_concurrent_jobs`` its jobs queued or running at once (either omitted: no quota).

A named token owns what it creates under its *name* (``token:alice``), so rotating its secret keeps
its jobs and conversations. The file is read again whenever its modification time changes (checked
at most once a second), so adding, rotating or revoking a token needs no restart. A file that does
not parse keeps the last good set, logged; at start it is an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

log = logging.getLogger("shared.service.tokens")

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RELOAD_CHECK_SECONDS = 1.0


@dataclass(frozen=True)
class Quota:
    megapixel_steps_per_hour: float | None = None
    max_concurrent_jobs: int | None = None


@dataclass(frozen=True)
class Identity:
    """Who a request is: the owner of what it creates, and (named tokens) its name and quota."""

    owner: str
    name: str | None = None
    quota: Quota | None = None


class _NamedToken(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[str] = Field(min_length=1)
    megapixel_steps_per_hour: float | None = Field(default=None, gt=0)
    max_concurrent_jobs: int | None = Field(default=None, ge=1)


class _TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: dict[str, _NamedToken] = Field(default_factory=dict)


def owner_digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()[:32]


def named_owner(name: str) -> str:
    return f"token:{name}"


def read_token_file(path: Path) -> list[tuple[bytes, Identity]]:
    """The named tokens of ``path``; raises ``ValueError`` saying what is wrong (never the secrets)."""
    try:
        document: Any = json.loads(path.read_text())
        parsed = _TokenFile.model_validate(document)
    except ValidationError as exc:  # (a ValueError: caught first) says where, never the secrets
        where = ", ".join(".".join(str(p) for p in e["loc"]) + f": {e['msg']}" for e in exc.errors())
        raise ValueError(f"token file {path}: {where}") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"token file {path}: not readable JSON ({type(exc).__name__})") from None
    found: list[tuple[bytes, Identity]] = []
    seen: set[str] = set()
    for name, entry in parsed.tokens.items():
        if not NAME_PATTERN.match(name):
            raise ValueError(f"token file {path}: the name {name[:64]!r} is not [A-Za-z0-9_-]{{1,64}}")
        quota = Quota(entry.megapixel_steps_per_hour, entry.max_concurrent_jobs)
        for token in entry.tokens:
            if len(token) < 16:
                raise ValueError(f"token file {path}: a token of {name!r} is shorter than 16 characters")
            if token in seen:
                raise ValueError(f"token file {path}: a token of {name!r} is listed twice")
            seen.add(token)
            found.append((token.encode(), Identity(named_owner(name), name, quota)))
    return found


class TokenRegistry:
    """Every accepted token and who it is; the file is re-read when it changes."""

    def __init__(self, settings: Any) -> None:
        token = settings.api_token
        plain = [t.strip().encode() for t in token.get_secret_value().split(",") if t.strip()] if token else []
        self._plain = [(t, Identity(owner_digest(t))) for t in plain]
        self.path: Path | None = settings.api_tokens_file
        self._named: list[tuple[bytes, Identity]] = []
        self._mtime: float | None = None
        self._checked = 0.0
        self._lock = threading.Lock()
        if self.path is not None:
            self._named = read_token_file(self.path)  # a bad file at start is an error
            self._mtime = self.path.stat().st_mtime

    def _refresh(self) -> None:
        if self.path is None or time.monotonic() - self._checked < RELOAD_CHECK_SECONDS:
            return
        with self._lock:
            self._checked = time.monotonic()
            try:
                mtime = self.path.stat().st_mtime
            except OSError as exc:
                log.error("token file unreadable, keeping the last good tokens: %s", exc)
                return
            if mtime == self._mtime:
                return
            try:
                self._named = read_token_file(self.path)
            except ValueError as exc:
                log.error("%s; keeping the last good tokens", exc)
                return
            finally:
                self._mtime = mtime
            log.info("token file reloaded: %d named tokens", len(self._named))

    def entries(self) -> list[tuple[bytes, Identity]]:
        self._refresh()
        return self._plain + self._named

    @property
    def configured(self) -> bool:
        """Auth is on: some token is (or was configured to be) accepted. A token file that lists no
        token still means auth is on, so emptying it revokes everyone instead of opening the service."""
        return bool(self._plain) or self.path is not None

    def match(self, given: bytes | None) -> Identity | None:
        # compare_digest against every token, without stopping early: the time taken must not tell
        # an attacker how much of a token matched, nor which of them.
        found: Identity | None = None
        for token, identity in self.entries():
            if secrets.compare_digest(given or b"", token) and given is not None:
                found = identity
        return found

    def named(self) -> list[Identity]:
        """One identity per named token (for the admin's usage view)."""
        unique: dict[str, Identity] = {}
        for _, identity in self.entries():
            if identity.name is not None:
                unique.setdefault(identity.name, identity)
        return list(unique.values())
