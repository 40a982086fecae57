"""Webhook targets: refuse internal addresses (SSRF), then POST the job to the address that was vetted.

A webhook is a request our servers make on a user's behalf, so by default it may only go to
publicly routable addresses; operators opt in to private ones (``allow_private_webhooks``).
The API vets the URL at submission (an early, clear 422); the worker vets it again before each
attempt and then connects to *the address it vetted* (Host header and TLS SNI keep the name), so
a DNS answer that changes between the check and the connection (rebinding) cannot redirect the
POST to loopback or the private network. Both the API and the worker use this module.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

log = logging.getLogger("render_service.webhooks")

SIGNATURE_HEADER = "X-Omost-Signature"
DELIVERY_ID_HEADER = "Webhook-Id"
"""The same on every attempt of one delivery (the Standard Webhooks header name): receivers dedupe on it."""

Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``; the default asks the system resolver (``getaddrinfo``)."""

# IPv6 forms that carry an IPv4 address a gateway may forward to: NAT64, 6to4 and the deprecated
# IPv4-compatible ::a.b.c.d. Python calls most of them "global", whatever IPv4 address they embed.
_IPV4_EMBEDDING = (
    ipaddress.ip_network("64:ff9b::/96"),
    ipaddress.ip_network("64:ff9b:1::/48"),
    ipaddress.ip_network("2002::/16"),
    ipaddress.ip_network("::/96"),
)


class WebhookRefused(ValueError):
    """The URL is malformed or points at an address the settings do not allow."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
        elif any(ip in network for network in _IPV4_EMBEDDING):
            return False
    # is_global excludes loopback, private, link-local, CGNAT, reserved and unspecified ranges.
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class Target:
    """A vetted webhook URL and the one address to connect to."""

    url: str
    address: str


def _host_and_port(url: str) -> tuple[str, int]:
    """The URL's host and port, or :class:`WebhookRefused` if it is not a plain http(s) URL with a valid host."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError as exc:  # e.g. "http://[::1" — an unclosed IPv6 bracket
        raise WebhookRefused(f"webhook_url is not a valid URL: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused("webhook_url must be an http:// or https:// URL")
    if not hostname:
        raise WebhookRefused("webhook_url has no host")
    if parts.username or parts.password:
        raise WebhookRefused("webhook_url must not contain credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise WebhookRefused(f"webhook_url has a bad port: {exc}") from exc
    try:
        # Empty labels ("a..b", ".x") and labels over 63 characters are not host names at all.
        hostname.encode("idna")
    except UnicodeError as exc:
        raise WebhookRefused(f"webhook_url host {hostname!r} is not a valid host name: {exc}") from exc
    return hostname, port


def check_webhook_syntax(url: str) -> None:
    """Raise :class:`WebhookRefused` unless ``url`` is a plain http(s) URL with a valid host name. No
    network and no Redis: the API's first check, so a malformed URL is a 422 whatever else is down."""
    _host_and_port(url)


def vet_webhook_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> Target:
    """Resolve ``url``'s host once and check every address; raise :class:`WebhookRefused` saying why not.

    The returned :class:`Target` names the one address to connect to, so what is called is what was vetted.
    """
    host, port = _host_and_port(url)
    try:
        addresses = resolver(host, port)
    except (OSError, UnicodeError) as exc:
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve")
    for address in addresses:
        if not allow_private and not _is_public(address):
            raise WebhookRefused(
                f"webhook_url host {host!r} resolves to {address}, a loopback, private or "
                "link-local address; this server does not call those"
            )
    return Target(url, addresses[0].split("%", 1)[0])


def check_webhook_url(url: str, *, allow_private: bool, resolver: Resolver = system_resolver) -> None:
    """Raise :class:`WebhookRefused` saying why ``url`` may not be called (the API's check at submit).

    With ``allow_private`` the host is not resolved here: any host is allowed, and one that does not
    resolve yet may by the time the job ends.
    """
    _host_and_port(url)
    if not allow_private:
        vet_webhook_url(url, allow_private=False, resolver=resolver)


def sign(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _RetryableStatus(Exception):
    """An attempt that may succeed later (no answer, 429, 5xx), inside :func:`deliver`'s retry loop."""

def _post(client: httpx.Client, target: Target, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST to the vetted address itself: the URL's host becomes the IP, the name stays in Host and SNI."""
    url = httpx.URL(target.url)
    pinned = url.copy_with(host=target.address)
    extensions = {"sni_hostname": url.raw_host.decode()} if url.scheme == "https" else {}
    return client.post(
        pinned, content=body, headers={**headers, "Host": url.netloc.decode()}, extensions=extensions
    )


@dataclass(frozen=True)
class Attempt:
    """How one POST ended: ``delivered`` (2xx), ``rejected`` (another answer below 500, not 429: the
    receiver refuses this body for good), ``refused`` (the settings forbid the address), ``retry``
    (no answer, 429 or 5xx: try again later)."""

    kind: Literal["delivered", "rejected", "refused", "retry"]
    detail: str


def headers_for(body: bytes, *, event: str, delivery_id: str | None, secret: str | None) -> dict[str, str]:
    """The headers of every attempt: the same ``Webhook-Id`` on each, so a receiver can drop repeats."""
    headers = {"Content-Type": "application/json", "X-Omost-Event": event}
    if delivery_id:
        headers[DELIVERY_ID_HEADER] = delivery_id
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)
    return headers


def post_once(
    client: httpx.Client,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    resolver: Resolver = system_resolver,
) -> Attempt:
    """Vet ``url`` again and POST ``body`` once to the address vetted."""
    try:
        target = vet_webhook_url(url, allow_private=allow_private, resolver=resolver)
        response = _post(client, target, body, headers)
    except WebhookRefused as exc:
        return Attempt("refused", f"refused: {exc}")
    except httpx.TransportError as exc:
        return Attempt("retry", f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if response.status_code == 429 or response.status_code >= 500:
        return Attempt("retry", f"HTTP {response.status_code}")
    if response.is_success:
        return Attempt("delivered", f"HTTP {response.status_code}")
    return Attempt("rejected", f"HTTP {response.status_code}")


def deliver(
    url: str,
    body: bytes,
    *,
    event: str,
    allow_private: bool,
    secret: str | None,
    max_attempts: int,
    timeout: float,
    delivery_id: str | None = None,
    resolver: Resolver = system_resolver,
) -> str:
    """POST ``body`` to ``url`` in this process; retry transport errors, 429 and 5xx with backoff.
    Returns an outcome. (The worker sends each attempt through the durable queue of deliveries
    instead, :mod:`render_service.worker.webhook_sender`, so that a retry survives its death.)

    Every attempt vets the URL again and connects to the address it vetted.
    """
    headers = headers_for(body, event=event, delivery_id=delivery_id, secret=secret)
    # Redirects are not followed: they could lead to an address the check would refuse.
    with httpx.Client(timeout=timeout, follow_redirects=False) as client:
        retrying = Retrying(
            retry=retry_if_exception_type(_RetryableStatus),
            stop=stop_after_attempt(max_attempts),
            wait=wait_exponential_jitter(multiplier=0.5, max=30.0),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    result = post_once(client, url, body, headers, allow_private=allow_private, resolver=resolver)
                    if result.kind == "retry":
                        raise _RetryableStatus(result.detail)
                    if result.kind == "delivered":
                        number = attempt.retry_state.attempt_number
                        return f"delivered: {result.detail} after {number} attempt(s)"
                    return result.detail if result.kind == "refused" else f"rejected: {result.detail}"
        except _RetryableStatus as exc:
            log.warning("webhook to %s failed: %s", url, exc)
            return f"failed after {max_attempts} attempts: {exc}"
    return "failed"  # unreachable: Retrying either returns, raises or reraises
