"""LeanEvent and LeanPipeline behave as asyncio.Event and deque do where uvicorn and the stream use them."""

from __future__ import annotations

import asyncio
import contextlib

from core.lean import LeanEvent, LeanPipeline


async def test_wait_returns_at_once_when_set_and_waits_after_clear() -> None:
    event = LeanEvent()
    event.set()
    assert event.is_set() and await event.wait() is True
    event.clear()
    waiter = asyncio.create_task(event.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    event.set()
    assert await waiter is True


async def test_set_wakes_every_waiter_and_a_cancelled_one_is_forgotten() -> None:
    event = LeanEvent()
    waiters = [asyncio.create_task(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiters[0]
    event.set()
    assert await asyncio.gather(*waiters[1:]) == [True, True]
    assert not event._waiters  # nothing left behind to hold


def test_a_lean_event_may_start_set() -> None:
    assert LeanEvent(True).is_set() and not LeanEvent().is_set()


def test_the_lean_pipeline_is_first_in_first_out_as_uvicorn_uses_its_deque() -> None:
    pipeline = LeanPipeline()
    assert not pipeline
    pipeline.appendleft("first")
    pipeline.appendleft("second")
    assert pipeline and pipeline.pop() == "first" and pipeline.pop() == "second"
