"""Run a coroutine in the caller's turn until it first suspends; only then give it a task.

Writing one event to thousands of sockets is mostly ``send`` calls that never suspend (the socket is
writable). Waking a task per connection per event costs more than the write itself, so the hub drives
each ``send`` directly and only a send that has to wait (a full socket) becomes a task.
(Python 3.12's eager tasks do the same, with a task object each time.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any


def run_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Step ``coro`` now; None if it finished, else a task that finishes it. Its exceptions propagate."""
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, waiting_on))


async def _finish(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    await _Resume(coro, waiting_on)


class _Resume:
    """Hands a suspended coroutine's pending future to the task driving us, and resumes it after."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, waiting_on = self.coro, self.waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # cancellation and the like belong to the coroutine
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration:
                    return
