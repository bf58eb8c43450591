"""Credentials kept out of logs and error messages: a NATS URL is shown without its password or token."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` with its password (``user:password@``) or token (``token@``) replaced by ``***``.

    A URL that cannot be parsed is hidden whole past its scheme: it may hold a secret in a place we did not expect.
    """
    try:
        parts = urlsplit(url if "://" in url else f"nats://{url}")
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}{sep}{HIDDEN}" if sep else HIDDEN
    if "@" not in parts.netloc:
        return url
    user = parts.username if parts.password is not None else None
    userinfo = f"{user}:{HIDDEN}" if user else HIDDEN
    netloc = f"{userinfo}@{f'[{host}]' if ':' in host else host}{f':{port}' if port is not None else ''}"
    shown = urlunsplit(parts._replace(netloc=netloc))
    return shown if "://" in url else shown.removeprefix("nats://")


def redact_urls(urls: Iterable[str]) -> list[str]:
    """Each URL redacted (``redact_url``)."""
    return [redact_url(url) for url in urls]
