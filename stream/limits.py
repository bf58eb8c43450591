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
    """``rate_per_s`` events per second on average, in bursts of up to one second's worth.

    Kept as when the next token is there, as GCRA does, counted in tokens (``now * rate_per_s``): a take adds 1.0
    to it, exactly however many are taken at once, and costs less than adding up the tokens the time since the last
    take brought (this runs per connection per event).
    """

    __slots__ = ("_burst", "_next_token", "rate_per_s")

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self._burst = max(1.0, rate_per_s) - 1.0  # the tokens of a full bucket besides the next one
        self._next_token = time.monotonic() * rate_per_s - self._burst  # full

    def take(self, now: float) -> bool:
        """Spend a token if there is one (``now``: ``time.monotonic()``)."""
        at = now * self.rate_per_s
        next_token = self._next_token
        if at < next_token:
            return False
        if at - next_token > self._burst:  # a full bucket: the time beyond it brought no token
            next_token = at - self._burst
        self._next_token = next_token + 1.0
        return True

    def wait_s(self) -> float:
        """How long until the next token."""
        return max(0.0, self._next_token / self.rate_per_s - time.monotonic())


def jittered(retry_ms: int) -> int:
    """A reconnect delay between half and all of ``retry_ms``, so clients do not all come back at once."""
    return int(retry_ms * (0.5 + random.random() / 2))
