"""Webhook targets (SSRF) and delivery, without the network: literal addresses and a stub resolver."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from render_service.app import create_app
from render_service.settings import RenderSettings
from render_service.webhooks import WebhookRefused, check_webhook_url, deliver, sign
from tests.render_service.helpers import body


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://localhost:8080/hook",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.1.1/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[fe80::1]/",
        "http://[fd00::1]/",
        "http://[::ffff:127.0.0.1]/",  # IPv4-mapped loopback
        "http://224.0.0.1/",
        # IPv6 forms that embed an IPv4 address a gateway forwards to: refused whatever they embed.
        "http://[64:ff9b::7f00:1]/",  # NAT64 of 127.0.0.1
        "http://[64:ff9b::808:808]/",  # NAT64 of a public address
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[::127.0.0.1]/",  # IPv4-compatible
    ],
)
def test_internal_targets_refused(url: str) -> None:
    with pytest.raises(WebhookRefused, match="loopback, private or link-local"):
        check_webhook_url(url, allow_private=False)
    check_webhook_url(url, allow_private=True)  # the operator may allow them


@pytest.mark.parametrize("url", ["http://8.8.8.8/hook", "https://1.1.1.1:8443/x", "http://[2606:4700::1111]/"])
def test_public_targets_allowed(url: str) -> None:
    check_webhook_url(url, allow_private=False)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://8.8.8.8/", "http"),
        ("http:///path", "no host"),
        ("http://a:b@8.8.8.8/", "credentials"),
        # Not host names at all (IDNA refuses them): a clear refusal, not a crash in the resolver.
        ("http://a..b/", "not a valid host name"),
        ("http://.x/", "not a valid host name"),
        (f"http://{'a' * 64}.example.com/", "not a valid host name"),
        # urlsplit itself raises on an unclosed IPv6 bracket (found by schemathesis as a 500).
        ("http://[::1/", "not a valid URL"),
        ("http://[/", "not a valid URL"),
    ],
)
@pytest.mark.parametrize("allow_private", [True, False])
def test_malformed_targets(url: str, why: str, allow_private: bool) -> None:
    with pytest.raises(WebhookRefused, match=why):
        check_webhook_url(url, allow_private=allow_private)


def test_signature_is_hmac_sha256() -> None:
    assert sign(b"{}", "k") == "sha256=add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff"


class Receiver:
    """A local endpoint that records each POST's Host header and path."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                receiver.calls.append((self.headers["Host"], self.path))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


def stub_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> list[str]:
    """Answer the names in ``answers`` from a script, one answer per lookup; other names as usual.

    A stub because no DNS server here can answer one name differently from query to query (which
    is the attack). It replaces ``getaddrinfo`` itself, which every lookup goes through, so it
    sees the lookups of the vetting and of the HTTP client alike. Returns the names looked up.
    """
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(name)
        address = answers[name].pop(0) if len(answers[name]) > 1 else answers[name][0]
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_dns_rebinding_cannot_reach_loopback(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    # The name answers a public address to the check, then loopback (where the receiver listens) after.
    asked = stub_dns(monkeypatch, {"rebind.test": ["8.8.8.8", "127.0.0.1"]})
    outcome = deliver(
        f"http://rebind.test:{receiver.port}/hook",
        b"{}",
        event="render.succeeded",
        allow_private=False,
        secret=None,
        max_attempts=2,
        timeout=0.5,
    )
    assert receiver.calls == [], "the POST reached loopback"
    # The first attempt went to the vetted public address (unreachable here); the retry vetted again.
    assert outcome.startswith("refused:") and "127.0.0.1" in outcome, outcome
    assert asked == ["rebind.test", "rebind.test"]  # once per attempt, never by the HTTP client


def test_delivery_connects_to_the_vetted_address_with_the_name_as_host(
    monkeypatch: pytest.MonkeyPatch, receiver: Receiver
) -> None:
    asked = stub_dns(monkeypatch, {"hook.test": ["127.0.0.1"]})
    outcome = deliver(
        f"http://hook.test:{receiver.port}/hook?x=1",
        b"{}",
        event="render.succeeded",
        allow_private=True,
        secret=None,
        max_attempts=1,
        timeout=5,
    )
    assert outcome.startswith("delivered: HTTP 204"), outcome
    assert receiver.calls == [(f"hook.test:{receiver.port}", "/hook?x=1")]
    assert asked == ["hook.test"]


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://a..b/", "not a valid host name"),
        ("http://.x/", "not a valid host name"),
        (f"http://{'a' * 64}.com/", "not a valid host name"),
        ("http://[::1/", "not a valid URL"),
    ],
)
def test_the_api_answers_422_for_a_host_that_is_not_a_name(url: str, why: str) -> None:
    """In process: the URL is refused before Redis is touched, so none is needed (port 1 answers nothing)."""
    app = create_app(RenderSettings(redis_url="redis://127.0.0.1:1/0"))

    async def post() -> httpx.Response:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://render") as client:
                return await client.post("/v1/renders", json=body(webhook_url=url))

    answer = asyncio.run(post())
    assert answer.status_code == 422, answer.text
    assert why in answer.json()["detail"]
