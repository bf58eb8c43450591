"""run_eagerly: finished in the caller's turn when nothing waits, finished by a task when something does."""

from __future__ import annotations

import asyncio

import pytest

from stream.eager import run_eagerly


async def test_a_coroutine_that_never_waits_runs_to_the_end_at_once() -> None:
    done: list[str] = []

    async def write() -> None:
        done.append("written")

    assert run_eagerly(write()) is None
    assert done == ["written"]


async def test_a_coroutine_that_waits_is_finished_by_a_task() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    steps: list[str] = []

    async def write() -> None:
        steps.append("started")
        steps.append(await gate)

    task = run_eagerly(write())
    assert steps == ["started"] and task is not None
    gate.set_result("resumed")
    await task
    assert steps == ["started", "resumed"]


async def test_cancelling_the_task_cancels_the_coroutine() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cleaned: list[bool] = []

    async def write() -> None:
        try:
            await gate
        finally:
            cleaned.append(True)

    task = run_eagerly(write())
    assert task is not None
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


async def test_errors_before_the_first_wait_reach_the_caller() -> None:
    async def broken() -> None:
        raise OSError("socket gone")

    with pytest.raises(OSError, match="socket gone"):
        run_eagerly(broken())
