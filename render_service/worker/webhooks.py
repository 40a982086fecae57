"""Webhook targets: refuse internal addresses (SSRF), then POST the job with retries.

A webhook is a request our servers make on a user's behalf, so by default it may only go to
publicly routable addresses; operators opt in to private ones (``allow_private_webhooks``).
The API checks the URL at submission (an early, clear 422) and the worker checks again right
before sending, because DNS answers can change in between.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from urllib.parse import urlsplit

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger("render_service.webhooks")

SIGNATURE_HEADER = "X-Omost-Signature"


class WebhookRefused(ValueError):
    """The URL is malformed or points at an address the settings do not allow."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    # is_global excludes loopback, private, link-local, CGNAT, reserved and unspecified ranges.
    return ip.is_global and not ip.is_multicast


def check_webhook_url(url: str, *, allow_private: bool) -> None:
    """Raise :class:`WebhookRefused` saying why ``url`` may not be called."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("webhook_url must be an http:// or https:// URL")
    if not parts.hostname:
        raise WebhookRefused("webhook_url has no host")
    if parts.username or parts.password:
        raise WebhookRefused("webhook_url must not contain credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookRefused(f"webhook_url has a bad port: {exc}") from exc
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookRefused(f"webhook_url host {parts.hostname!r} does not resolve: {exc}") from exc
    for info in infos:
        address = str(info[4][0])
        if not _is_public(address):
            raise WebhookRefused(
                f"webhook_url host {parts.hostname!r} resolves to {address}, a loopback, private or "
                "link-local address; this server does not call those"
            )


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _RetryableStatus(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(f"HTTP {status_code}")
        self.status_code = status_code


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, (httpx.TransportError, _RetryableStatus))


def deliver(
    url: str,
    body: bytes,
    *,
    event: str,
    allow_private: bool,
    secret: str | None,
    max_attempts: int,
    timeout: float,
) -> str:
    """POST ``body`` to ``url``; retry transport errors, 429 and 5xx with backoff. Returns an outcome."""
    try:
        check_webhook_url(url, allow_private=allow_private)
    except WebhookRefused as exc:
        return f"refused: {exc}"
    headers = {"Content-Type": "application/json", "X-Omost-Event": event}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    # Redirects are not followed: they could lead to an address the check above would refuse.
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(max_attempts),
            wait=wait_exponential_jitter(initial=0.5, max=30.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    response = client.post(url, content=body, headers=headers)
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _RetryableStatus(response.status_code)
                    number = attempt.retry_state.attempt_number
                    if response.is_success:
                        return f"delivered: HTTP {response.status_code} after {number} attempt(s)"
                    return f"rejected: HTTP {response.status_code}"
        except (httpx.TransportError, _RetryableStatus) as exc:
            log.warning("webhook to %s failed: %s", url, exc)
            return f"failed after {max_attempts} attempts: {exc}"
    return "failed"  # unreachable: Retrying either returns, raises or reraises
