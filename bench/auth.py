"""The cost of auth: the same load with ``TELEMETRY_AUTH=required`` and with it off, runs interleaved.

Auth is checked once per request or stream, never per event (issue 13), so turning it on must not change
what an event or a reading costs: the stream service's fan-out (``bench.run --only auth``) and the ingest
service's throughput (``bench.ingest --only auth``) with auth on stay within ``AUTH_TARGET`` of auth off.
Each side is measured ``RUNS`` times, off and on alternating, each run on a process of its own started for
it; the figure is the median of each side's runs and the ratio is on / off (bench/README.md, section 8).
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from core.apikeys import create_key, key_line
from core.auth import mint_token
from core.topics import Pattern

AUTH_TARGET = 1.10  # the cost with auth on, at most this many times the cost with it off
RUNS = 3
TOKEN_TTL_S = 3600.0  # longer than any run: a stream ended by token_expired would change what is measured
SECRET_BYTES = 32  # the services refuse an HS256 secret shorter than its hash


def new_secret() -> str:
    """A fresh HS256 secret for one benchmark run."""
    return secrets.token_urlsafe(SECRET_BYTES)


def auth_settings(secret: str | None = None, api_keys_file: Path | None = None) -> dict[str, str]:
    """The settings (``Settings`` field names) that turn auth on with this secret and keys file."""
    settings = {"auth": "required"}
    if secret is not None:
        settings["jwt_secret"] = secret
    if api_keys_file is not None:
        settings["api_keys_file"] = str(api_keys_file)
    return settings


def bearer(credential: str) -> str:
    """The value of the ``Authorization`` header that sends a token or an API key."""
    return f"Bearer {credential}"


def tokens(secret: str, count: int, *, publish: Iterable[str] = (), subscribe: Iterable[str] = ()) -> list[str]:
    """``count`` different tokens for the patterns, minted as any client holding the secret would.

    ``mint_token`` claims only the patterns and the times, so tokens minted in one second would be the same
    token: each lives a second longer than the one before, and every client has one of its own.
    """
    publish_patterns = [Pattern.parse(text) for text in publish]
    subscribe_patterns = [Pattern.parse(text) for text in subscribe]
    return [
        mint_token(secret.encode(), publish=publish_patterns, subscribe=subscribe_patterns, ttl_s=TOKEN_TTL_S + n)
        for n in range(count)
    ]


def write_api_keys(path: Path, count: int, publish: Iterable[str]) -> list[str]:
    """``count`` new device API keys, their lines written to the keys file at ``path``; returns the keys."""
    patterns = [Pattern.parse(text) for text in publish]
    keys = [create_key() for _ in range(count)]
    path.write_text("".join(key_line(key, patterns) + "\n" for key in keys))
    return keys


@dataclass
class Comparison:
    """The costs of one load with auth off and with it on, one per run, in the order they were measured."""

    off: list[float]
    on: list[float]

    @property
    def off_median(self) -> float:
        """The median cost with auth off."""
        return statistics.median(self.off) if self.off else float("nan")

    @property
    def on_median(self) -> float:
        """The median cost with auth on."""
        return statistics.median(self.on) if self.on else float("nan")

    @property
    def ratio(self) -> float:
        """On / off, NaN when undefined."""
        off = self.off_median
        return self.on_median / off if off > 0 else float("nan")

    @property
    def ok(self) -> bool:
        """Whether auth on costs at most ``AUTH_TARGET`` times auth off (and both sides were measured)."""
        return len(self.on) == len(self.off) == RUNS and self.ratio <= AUTH_TARGET
