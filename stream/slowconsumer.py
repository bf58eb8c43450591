"""Slow consumers: what a client that does not keep up may hold, in time and in memory.

- **Time.** A connection whose bytes wait (queued, being written, or in the transport's buffer) and
  none of which reach the client's socket for ``slow_consumer_timeout_s`` is ended, whether or not new
  events arrive: the ticker samples each connection's ``Progress`` once a tick.
- **Memory.** What every connection has waiting (those bytes plus its conflated readings) is summed in one
  ``PendingBudget`` for the process, kept up to date by each connection's own change (O(1) per write).
  Past the budget, the connections furthest behind are conflated and then cut until the total is back
  under it: the process cannot grow with the number of clients that stopped reading.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

SHED_TO = 0.9  # shedding goes below the limit, so that it runs once per tenth of the budget, not per event


class Progress:
    """Whether a connection's bytes move towards its client, from samples (each write that leaves bytes waiting, each
    tick) of the bytes that left for the kernel; ``moved_at`` is when they last did (or when none waited)."""

    __slots__ = ("_out_bytes", "_stalled_at", "moved_at")

    def __init__(self, now: float) -> None:
        self._out_bytes = 0
        self._stalled_at: float | None = None
        self.moved_at = now

    def sample(self, out_bytes: int, waiting: bool, now: float) -> float:
        """Seconds bytes have waited with none leaving (0 while some leave, or none wait).

        ``out_bytes`` only grows while bytes reach the kernel. The stall is counted from the first sample
        that saw it, so it is never longer than the client's real stall (at most one sample shorter).
        """
        if not waiting or out_bytes > self._out_bytes:
            self._out_bytes = out_bytes
            self._stalled_at = None
            self.moved_at = now
            return 0.0
        if self._stalled_at is None:
            self._stalled_at = now
        return now - self._stalled_at


class Sheddable(Protocol):
    """What the budget needs of a connection (stream.connection.Connection)."""

    @property
    def pending_bytes(self) -> int: ...

    @property
    def moved_at(self) -> float: ...

    def conflate_queue(self) -> None: ...

    def cut(self, reason: str) -> None: ...


class PendingBudget:
    """The bytes every connection of the process has waiting, held under ``limit_bytes``.

    Each connection reports its change (``add``); when the total passes the limit, the connections are
    ranked furthest behind first (the longest since any of their bytes reached the kernel, then holding the
    most) and, in that order, each has its queued readings conflated (``conflate_queue``) and, if the total
    is still over, is cut (``memory_budget``), until the total is below ``SHED_TO`` of the limit. A client
    that reads keeps moving its bytes, and one whose socket takes what it is sent holds nothing: it is
    reached only once every one behind it is gone.
    """

    def __init__(self, limit_bytes: int, connections: Collection[Sheddable]) -> None:
        self.limit_bytes = limit_bytes
        self.total = 0
        self._connections = connections
        self._shedding = False

    def add(self, delta: int) -> None:
        """A connection's pending bytes changed by ``delta``; shed at once if that passes the limit."""
        self.total += delta
        if self.total > self.limit_bytes and not self._shedding:
            self._shed()

    def _shed(self) -> None:
        self._shedding = True  # what shedding frees is added here too, and must not shed again
        try:
            goal = self.limit_bytes * SHED_TO
            ranked = sorted(
                (connection for connection in self._connections if connection.pending_bytes),
                key=lambda connection: (connection.moved_at, -connection.pending_bytes),
            )
            for connection in ranked:
                if self.total <= goal:
                    return
                connection.conflate_queue()
                if self.total > goal:
                    connection.cut("memory_budget")
        finally:
            self._shedding = False
