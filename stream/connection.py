"""One SSE subscriber: its patterns, the frames waiting to be written, and its place in the stream."""

from __future__ import annotations

import asyncio

from core.topics import Pattern

REPLAY_HIGH_WATER_BYTES = 1 << 20


class Connection:
    """Frames for one client, kept in stream order, each reading at most once.

    ``last_seq`` only grows: a frame at or below it is dropped, which is what makes the hand-over
    from replay to the live feed free of duplicates. While the connection is replaying, live
    frames are held back and released after the replay, which makes it free of gaps.
    """

    def __init__(self, patterns: list[Pattern], *, last_seq: int, replaying: bool) -> None:
        self.patterns = patterns
        self.last_seq = last_seq
        self.replaying = replaying
        self.frames: list[bytes] = []
        self.buffered_bytes = 0
        self.unsent_readings = 0
        self.wakeup = asyncio.Event()
        self.drained = asyncio.Event()
        self.closed = False
        self.ending = False
        self._held: list[tuple[int, bytes]] = []

    def deliver(self, seq: int, frame: bytes) -> None:
        """A live reading from the hub."""
        if self.replaying:
            self._held.append((seq, frame))
        else:
            self.push_reading(seq, frame)

    def push_reading(self, seq: int, frame: bytes) -> None:
        """Queue a reading frame unless the client already has it."""
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        self.unsent_readings += 1
        self.push(frame)

    def push(self, frame: bytes) -> None:
        """Queue any frame and wake the writer."""
        self.frames.append(frame)
        self.buffered_bytes += len(frame)
        self.wakeup.set()

    def finish_replay(self) -> None:
        """Release the live frames held during the replay; those the replay already sent are dropped."""
        self.replaying = False
        held, self._held = self._held, []
        for seq, frame in held:
            self.push_reading(seq, frame)

    def take(self) -> tuple[bytes, int]:
        """Everything pending as one write, and how many readings it holds."""
        data = b"".join(self.frames) if len(self.frames) > 1 else self.frames[0]
        readings = self.unsent_readings
        self.frames.clear()
        self.buffered_bytes = 0
        self.unsent_readings = 0
        self.wakeup.clear()
        self.drained.set()
        return data, readings

    async def wait_drained(self) -> None:
        """Back-pressure for a replay: wait while the client is far behind."""
        while self.buffered_bytes > REPLAY_HIGH_WATER_BYTES and not self.closed:
            self.drained.clear()
            await self.drained.wait()

    def end(self, frame: bytes) -> None:
        """Write ``frame`` after what is pending, then close the stream."""
        self.push(frame)
        self.ending = True

    def close(self) -> None:
        """Stop the writer at its next turn, writing nothing more (the client is gone, or we stop)."""
        self.closed = True
        self.wakeup.set()
        self.drained.set()
