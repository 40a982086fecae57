"""The one way to open a Redis client for the queue, and the image stores a service reads and writes.

One decoding rule: replies are never decoded by the client (PNG bytes and text share it); the queue
decodes what it reads (:func:`shared.queue.wire.text`). ``protocol=2`` because the stream replies are
unpacked in the RESP2 shapes (:func:`shared.queue.wire.stream_entries`).

``OMOST_REDIS_URL`` is either a plain ``redis://`` / ``rediss://`` / ``unix://`` URL or a Sentinel URL,
``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?sentinel_password=...]``
(``rediss+sentinel://`` speaks TLS to the Sentinels and the data nodes): redis-py's Sentinel support
asks the Sentinels for the primary of ``service_name`` on each new connection and drops connections
to a primary that was demoted, so a client follows a failover by itself (docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from shared.queue.images import ImageStore, RedisImages
from shared.queue.keys import QueueKeys
from shared.queue.settings import ImageStoreSettings

DEFAULTS: dict[str, Any] = {"protocol": 2, "socket_connect_timeout": 5}
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
"""Sentinel URL schemes, and whether each speaks TLS."""
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """A parsed ``redis+sentinel://`` URL: where the Sentinels are and how to reach the primary they name."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_options: dict[str, Any] = field(default_factory=dict)
    """Credentials of the Sentinels themselves (``?sentinel_username=&sentinel_password=``), if they need any."""

    def node_options(self) -> dict[str, Any]:
        """Connection options of the data nodes (the primary)."""
        options: dict[str, Any] = {"db": self.db}
        if self.username:
            options["username"] = self.username
        if self.password:
            options["password"] = self.password
        if self.ssl:
            options["ssl"] = True
        return options

    def sentinel_kwargs(self, socket_options: dict[str, Any]) -> dict[str, Any]:
        """Options of the connections to the Sentinels: the socket timeouts, TLS, their own credentials."""
        options = {k: v for k, v in socket_options.items() if k.startswith("socket_")}
        options.update(self.sentinel_options)
        if self.ssl:
            options["ssl"] = True
        return options


def parse_sentinel_url(url: str) -> SentinelUrl | None:
    """The Sentinel URL's parts, or None if ``url`` is not a Sentinel URL; ``ValueError`` if it is a broken one."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SENTINEL_SCHEMES:
        return None
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, credentials = netloc, ""
    username, _, password = credentials.partition(":") if ":" in credentials else ("", "", credentials)
    sentinels: list[tuple[str, int]] = []
    for part in hosts.split(","):
        if not part:
            continue
        if part.startswith("["):  # [IPv6]:port
            host, _, port_text = part[1:].partition("]")
            port_text = port_text.lstrip(":")
        else:
            host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError as exc:
            raise ValueError(f"bad Sentinel port in {part!r}") from exc
        sentinels.append((host, port))
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL names at least one Sentinel host:port")
    segments = [unquote(s) for s in path.split("/") if s]
    if not segments or len(segments) > 2:
        raise ValueError("a redis+sentinel:// URL ends in /service_name or /service_name/db")
    try:
        db = int(segments[1]) if len(segments) == 2 else 0
    except ValueError as exc:
        raise ValueError(f"bad database number {segments[1]!r}") from exc
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    sentinel_options = {
        name: params[f"sentinel_{name}"] for name in ("username", "password") if params.get(f"sentinel_{name}")
    }
    return SentinelUrl(
        sentinels=sentinels,
        service_name=segments[0],
        db=db,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=SENTINEL_SCHEMES[scheme.lower()],
        sentinel_options=sentinel_options,
    )


def describe(url: str) -> str:
    """The URL without its credentials, for logs and messages."""
    sentinel = parse_sentinel_url(url)
    if sentinel is not None:
        hosts = ",".join(f"{host}:{port}" for host, port in sentinel.sentinels)
        return f"sentinel {hosts} service {sentinel.service_name!r} db {sentinel.db}"
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}"


class _BlockingSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool):
    """A Sentinel-managed pool that waits ``timeout`` for a free connection (as the plain API pool does)
    instead of failing at once when all ``max_connections`` are in use."""


def async_client(
    url: str, *, max_connections: int | None = None, pool_timeout: float | None = None, **options: Any
) -> redis.asyncio.Redis:
    """An asyncio client; with ``max_connections``, a request waits up to ``pool_timeout`` for a free one."""
    settings = {**DEFAULTS, **options}
    sentinel_url = parse_sentinel_url(url)
    if sentinel_url is not None:
        # A client option, not a connection option: master_for would hand it to every connection.
        if settings.pop("single_connection_client", False):
            pool = async_client(url, **settings).connection_pool
            return redis.asyncio.Redis(connection_pool=pool, single_connection_client=True)
        sentinel = redis.asyncio.sentinel.Sentinel(
            sentinel_url.sentinels, sentinel_kwargs=sentinel_url.sentinel_kwargs(settings)
        )
        node = {**settings, **sentinel_url.node_options()}
        client: redis.asyncio.Redis
        if max_connections is None:
            client = sentinel.master_for(sentinel_url.service_name, **node)
            return client
        client = sentinel.master_for(
            sentinel_url.service_name,
            connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections,
            timeout=pool_timeout,
            **node,
        )
        return client
    if max_connections is None:
        return redis.asyncio.Redis.from_url(url, **settings)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **settings
    )
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client (the worker, the CLI)."""
    settings = {**DEFAULTS, **options}
    sentinel_url = parse_sentinel_url(url)
    if sentinel_url is not None:
        sentinel = redis.sentinel.Sentinel(
            sentinel_url.sentinels, sentinel_kwargs=sentinel_url.sentinel_kwargs(settings)
        )
        primary: redis.Redis = sentinel.master_for(
            sentinel_url.service_name, **{**settings, **sentinel_url.node_options()}
        )
        return primary
    return redis.Redis.from_url(url, **settings)


def image_stores(settings: ImageStoreSettings, keys: QueueKeys) -> tuple[ImageStore, list[ImageStore]]:
    """The store new images go to, and every store this service can read (the record says which holds a
    job's images, so jobs stored before a switch of ``OMOST_RENDER_IMAGE_STORE`` stay readable)."""
    redis_images = RedisImages(keys)
    if settings.image_store != "s3":
        return redis_images, [redis_images]
    from shared.queue.s3 import S3Images  # boto3 only where the s3 store is chosen

    s3_images = S3Images(settings, keys)
    return s3_images, [s3_images, redis_images]
