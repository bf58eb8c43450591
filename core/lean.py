"""Small stand-ins for the asyncio objects every open connection holds, without what they allocate up front.

An ``asyncio.Event`` makes a ``deque`` for its waiters when it is made, and a deque takes a 64-slot block at once:
about 860 bytes an event with nothing waiting, held for as long as a stream is open. A stream held three (its own
drain event, uvicorn's flow control's and its request cycle's ``message_event``) and uvicorn's empty ``pipeline``
deque: about 3 KB of each idle stream (bench idle memory: 10,000 streams).
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal


class LeanEvent:
    """``asyncio.Event``'s ``is_set``, ``set``, ``clear`` and ``wait``, its list of waiters made at the first wait.

    As with asyncio's, ``set`` wakes every waiter and ``wait`` returns True; it uses the running loop's futures.
    """

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> Literal[True]:
        """Return once the flag is set (at once if it is)."""
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            self._waiters.remove(waiter)


class LeanPipeline(list[Any]):
    """What uvicorn's httptools protocol does with its ``pipeline`` deque (``appendleft``, ``pop``, truth), on a list:
    an empty list is 56 bytes, an empty deque about 770. Requests pipelined behind a stream are few (core/httpprotocol
    bounds the heads a connection may send)."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)
