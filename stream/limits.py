"""Limits of the stream service: per-connection limits, a token bucket, and reconnect jitter."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    """What one connection may receive: the server's maxima, lowered by what the client asked for."""

    rate_per_s: float
    max_events: int  # 0: no limit
    max_buffer_bytes: int
    send_buffer_bytes: int  # the socket's SO_SNDBUF; 0: the kernel's own


class TokenBucket:
    """``rate_per_s`` events per second on average, in bursts of up to one second's worth."""

    __slots__ = ("_at", "_capacity", "_tokens", "rate_per_s")

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self._capacity = max(1.0, rate_per_s)
        self._tokens = self._capacity
        self._at = time.monotonic()

    def take(self, now: float | None = None) -> bool:
        """Spend a token if there is one (``now``: ``time.monotonic()``, when the caller has it already)."""
        if now is None:
            now = time.monotonic()
        tokens = self._tokens + (now - self._at) * self.rate_per_s
        if tokens > self._capacity:  # not min(): this runs per connection per event, and a builtin's call costs more
            tokens = self._capacity
        self._at = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def wait_s(self) -> float:
        """How long until the next token."""
        return max(0.0, (1.0 - self._tokens) / self.rate_per_s)


def jittered(retry_ms: int) -> int:
    """A reconnect delay between half and all of ``retry_ms``, so clients do not all come back at once."""
    return int(retry_ms * (0.5 + random.random() / 2))
