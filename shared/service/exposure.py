"""A warning when a service without a token listens beyond loopback: no-token mode is for a
trusted network (anyone who can connect may submit, read and cancel every job)."""

from __future__ import annotations

import ipaddress
import logging

from shared.service.settings import ServiceSettings

log = logging.getLogger("shared.service")

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or 0.0.0.0: may be reachable from elsewhere


def warn_if_exposed(settings: ServiceSettings, host: str, service: str) -> bool:
    """Log a warning (and return True) when ``host`` is beyond loopback and no API token is set."""
    if settings.api_token is not None or settings.api_tokens_file is not None or is_loopback(host):
        return False
    prefix = settings.model_config.get("env_prefix", "")
    log.warning(
        "%s listens on %s without an API token: anyone who can reach it may submit, read and cancel "
        "every job. Set %sAPI_TOKEN, or bind to 127.0.0.1 on a trusted network only.",
        service,
        host,
        prefix,
        extra={"fields": {"event": "exposed_without_token", "host": host}},
    )
    return True
