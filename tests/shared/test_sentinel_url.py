"""``redis+sentinel://`` URLs (shared/queue/connect.py): what each part becomes, and the broken ones refused."""

from __future__ import annotations

import pytest

from shared.queue.connect import describe, parse_sentinel_url


def test_a_plain_url_is_not_a_sentinel_url() -> None:
    assert parse_sentinel_url("redis://127.0.0.1:6379/0") is None
    assert parse_sentinel_url("rediss://:pw@host:6380/1") is None


def test_every_part_of_a_sentinel_url() -> None:
    url = "redis+sentinel://app:s%40cret@s1:26379,s2,[::1]:26380/omost/2?sentinel_password=spw"
    parsed = parse_sentinel_url(url)
    assert parsed is not None
    assert parsed.sentinels == [("s1", 26379), ("s2", 26379), ("::1", 26380)]
    assert (parsed.service_name, parsed.db, parsed.ssl) == ("omost", 2, False)
    assert parsed.node_options() == {"db": 2, "username": "app", "password": "s@cret"}
    assert parsed.sentinel_kwargs({"socket_timeout": 2, "protocol": 2}) == {"socket_timeout": 2, "password": "spw"}
    assert "s@cret" not in describe(url) and "spw" not in describe(url)


def test_tls_and_a_password_alone() -> None:
    parsed = parse_sentinel_url("rediss+sentinel://:pw@s1:26379/mymaster")
    assert parsed is not None and parsed.ssl and parsed.db == 0
    assert parsed.node_options() == {"db": 0, "password": "pw", "ssl": True}
    assert parsed.sentinel_kwargs({})["ssl"] is True


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:26379/a/b/c", "service_name"),
        ("redis+sentinel:///omost", "at least one Sentinel"),
        ("redis+sentinel://s1:port/omost", "port"),
        ("redis+sentinel://s1/omost/x", "database"),
    ],
)
def test_broken_sentinel_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_sentinel_url(url)
