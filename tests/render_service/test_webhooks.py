"""Webhook target checks (SSRF) without the network: literal addresses only."""

from __future__ import annotations

import pytest

from render_service.webhooks import WebhookRefused, check_webhook_url, sign


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
    [("ftp://8.8.8.8/", "http"), ("http:///path", "no host"), ("http://a:b@8.8.8.8/", "credentials")],
)
def test_malformed_targets(url: str, why: str) -> None:
    with pytest.raises(WebhookRefused, match=why):
        check_webhook_url(url, allow_private=True)


def test_signature_is_hmac_sha256() -> None:
    assert sign(b"{}", "k") == "sha256=add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff"
