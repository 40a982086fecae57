"""The one way to open a Redis client for the queue, and the image stores a service reads and writes.

One decoding rule: replies are never decoded by the client (PNG bytes and text share it); the queue
decodes what it reads (:func:`shared.queue.wire.text`). ``protocol=2`` because the stream replies are
unpacked in the RESP2 shapes (:func:`shared.queue.wire.stream_entries`).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio

from shared.queue.images import ImageStore, RedisImages
from shared.queue.keys import QueueKeys
from shared.queue.settings import ImageStoreSettings

DEFAULTS: dict[str, Any] = {"protocol": 2, "socket_connect_timeout": 5}


def async_client(
    url: str, *, max_connections: int | None = None, pool_timeout: float | None = None, **options: Any
) -> redis.asyncio.Redis:
    """An asyncio client; with ``max_connections``, a request waits up to ``pool_timeout`` for a free one."""
    settings = {**DEFAULTS, **options}
    if max_connections is None:
        return redis.asyncio.Redis.from_url(url, **settings)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout, **settings
    )
    return redis.asyncio.Redis.from_pool(pool)


def sync_client(url: str, **options: Any) -> redis.Redis:
    """A blocking client (the worker)."""
    return redis.Redis.from_url(url, **{**DEFAULTS, **options})


def image_stores(settings: ImageStoreSettings, keys: QueueKeys) -> tuple[ImageStore, list[ImageStore]]:
    """The store new images go to, and every store this service can read (the record says which holds a
    job's images, so jobs stored before a switch of ``OMOST_RENDER_IMAGE_STORE`` stay readable)."""
    redis_images = RedisImages(keys)
    if settings.image_store != "s3":
        return redis_images, [redis_images]
    from shared.queue.s3 import S3Images  # boto3 only where the s3 store is chosen

    s3_images = S3Images(settings, keys)
    return s3_images, [s3_images, redis_images]
