"""Windows on one shared timer behave as ``asyncio.timeout``: a TimeoutError past the deadline, for every window open,
and a cancellation from elsewhere stays one."""

from __future__ import annotations

import asyncio

import pytest

from ingest.deadlines import Deadlines

SHORT_S = 0.05
WITHIN_S = 30.0  # far beyond any deadline here, on a loaded machine


async def test_a_body_that_ends_in_time_is_untouched_and_leaves_nothing_open() -> None:
    deadlines = Deadlines(WITHIN_S)
    with deadlines.window() as window:
        await asyncio.sleep(0)
        assert len(deadlines) == 1
    assert not window.expired() and len(deadlines) == 0
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0


async def test_every_window_open_past_its_deadline_raises_timeout_error_and_its_task_goes_on() -> None:
    deadlines = Deadlines(SHORT_S)
    never = asyncio.Event()

    async def wait_in_window() -> str:
        with pytest.raises(TimeoutError):
            with deadlines.window():
                await never.wait()
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the window's cancellation was taken back
        await asyncio.sleep(0)  # not cancelled again
        return "went on"

    async with asyncio.timeout(WITHIN_S):
        results = await asyncio.gather(*(wait_in_window() for _ in range(3)))
    assert results == ["went on"] * 3 and len(deadlines) == 0


async def test_a_window_opened_later_gets_its_own_whole_time() -> None:
    # The first window's expiry re-arms the timer for the next open one; a closed one is not waited for.
    deadlines = Deadlines(SHORT_S)
    with deadlines.window():
        pass
    never = asyncio.Event()
    loop = asyncio.get_running_loop()
    opened = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(WITHIN_S):
            with deadlines.window():
                await never.wait()
    assert loop.time() - opened >= SHORT_S


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    deadlines = Deadlines(WITHIN_S)
    entered = asyncio.Event()

    async def wait_in_window() -> None:
        with deadlines.window():
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(wait_in_window())
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(deadlines) == 0


async def test_a_body_that_swallows_the_cancellation_still_says_it_expired() -> None:
    # nats-py swallows a cancellation inside a forced flush: the publisher asks the window afterwards.
    deadlines = Deadlines(SHORT_S)
    async with asyncio.timeout(WITHIN_S):
        with deadlines.window() as window:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                pass
    assert window.expired()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
