"""Rate pacing and conflation of one connection: a token bucket, and the latest waiting reading per topic.

Readings beyond the rate (or arriving while the client is far behind) wait here, one per topic: a newer
reading of a topic replaces the waiting one and takes its place at the back, so the waiting readings
stay in stream order without ever being sorted, and each is released in O(1) (an ``OrderedDict``: a
plain dict leaves a hole at its front for each released key, and finding the next one walks past them
all). A release is bounded by the tokens and by the room the connection gives it, never by the size of
the backlog: a dashboard on 100,000 topics costs what it is sent, not what waits.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable

from core.tallies import Tally
from stream.limits import TokenBucket


class Pacer(TokenBucket):
    """``rate_per_s`` readings a second for one connection; the readings refused wait, the latest per topic.

    ``bytes`` is what the waiting readings hold (counted in the process's pending budget). ``on_due``
    is called once the next token is there (``schedule``), to release more. A reading replaced by a
    newer one is counted in ``conflated``.
    """

    __slots__ = ("_conflated", "_on_due", "_timer", "bytes", "waiting")

    def __init__(self, rate_per_s: float, on_due: Callable[[], None], conflated: Tally) -> None:
        super().__init__(rate_per_s)
        # By topic, oldest first; read it, change it through the methods (it stays the same dict: it may be aliased).
        self.waiting: OrderedDict[str, tuple[int, bytes]] = OrderedDict()
        self._on_due = on_due
        self._conflated = conflated
        self._timer: asyncio.TimerHandle | None = None
        self.bytes = 0

    @property
    def scheduled(self) -> bool:
        """Whether a release is due at the next token already."""
        return self._timer is not None

    def hold(self, topic: str, seq: int, frame: bytes) -> None:
        """Keep ``frame`` as the waiting reading of ``topic``, replacing (and counting) an older one."""
        old = self.waiting.pop(topic, None)
        if old is not None:
            self.bytes -= len(old[1])
            self._conflated.count += 1
        self.waiting[topic] = (seq, frame)
        self.bytes += len(frame)

    def release(self, now: float, room_bytes: int) -> list[bytes]:
        """The oldest waiting readings, a token each, until ``room_bytes`` are used up (the last may pass it)."""
        released: list[bytes] = []
        waiting = self.waiting
        while waiting and room_bytes > 0 and self.take(now):
            _topic, (_seq, frame) = waiting.popitem(last=False)
            self.bytes -= len(frame)
            room_bytes -= len(frame)
            released.append(frame)
        return released

    def count_dropped(self, readings: int) -> None:
        """Readings dropped unsent (a queue the budget conflated), counted as conflated."""
        self._conflated.count += readings

    def schedule(self) -> None:
        """Call ``on_due`` once the next token is there (once, however often asked)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.wait_s(), self._due)

    def clear(self) -> None:
        """Forget every waiting reading and any scheduled release (the stream ends, or starts over)."""
        self.waiting.clear()
        self.bytes = 0
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        self._on_due()
