"""Admission over real sockets: the caps count a stream from the moment it is admitted, and get its slot back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import httpx
import pytest
from support.metrics import metric, metric_becomes
from support.server import on_server_loop
from support.sse import EVENT_TIMEOUT_S, Serve, raw_connection, raw_requests

from core.jetstream import JetStreamLink
from core.settings import Settings
from stream import sse
from stream.app import create_app
from stream.replay import ResumePlan, plan_resume

CAP = 3
REQUESTS = 20


class HeldPlans:
    """Resume plans held until ``release``: every request sent at once is admitted or refused before any plan ends.

    Without the hold, a request's plan (a JetStream round trip) could end before the next request
    arrives, and the test would depend on how fast this machine is.
    """

    def __init__(self) -> None:
        self.waiting = 0
        self._released = asyncio.Event()  # used on the server's loop only

    async def plan(self, link: JetStreamLink, requested: int) -> ResumePlan:
        self.waiting += 1
        await self._released.wait()
        return await plan_resume(link, requested)

    async def release(self) -> None:
        self._released.set()


async def response_head(url: str, stack: contextlib.AsyncExitStack) -> bytes:
    """The head of the answer to a resume from the start (``last_event_id=0``); the connection stays open."""
    reader, writer = await raw_connection(url)
    stack.push_async_callback(writer.wait_closed)
    stack.callback(writer.close)
    writer.write(raw_requests("/v1/stream?topic=a.%3E&last_event_id=0"))
    return await reader.readuntil(b"\r\n\r\n")


@pytest.mark.parametrize(
    ("cap", "reason"),
    [("max_connections_per_client", "too_many_connections_from_client"), ("max_connections", "too_many_connections")],
)
async def test_resumes_sent_at_once_never_pass_a_cap(
    make_settings: Callable[..., Settings], serve: Serve, monkeypatch: pytest.MonkeyPatch, cap: str, reason: str
) -> None:
    held = HeldPlans()
    monkeypatch.setattr(sse, "plan_resume", held.plan)
    app = create_app(make_settings(**{cap: CAP}))
    refused = f'telemetry_stream_refused_connections_total{{reason="{reason}"}}'
    async with serve(app) as url, contextlib.AsyncExitStack() as stack:
        heads = [asyncio.create_task(response_head(url, stack)) for _ in range(REQUESTS)]
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:  # every request admitted (and held in its plan) or refused
                if held.waiting + await metric(url, refused) == REQUESTS:
                    break
                await asyncio.sleep(0.02)
        await on_server_loop(app, held.release())
        answers = await asyncio.gather(*heads)
        streams = [head for head in answers if b"transfer-encoding: chunked" in head.lower()]
        assert len(streams) == CAP
        assert await metric(url, "telemetry_stream_connections_active") == CAP


async def test_a_stream_admitted_before_a_drain_is_ended_by_it(
    settings: Settings, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = HeldPlans()
    monkeypatch.setattr(sse, "plan_resume", held.plan)
    app = create_app(settings)
    async with (
        serve(app) as url,
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=EVENT_TIMEOUT_S)) as client,
    ):

        async def whole_stream() -> str:
            params = {"topic": "a.>", "last_event_id": "0"}
            async with client.stream("GET", f"{url}/v1/stream", params=params) as response:
                return (await response.aread()).decode()

        reading = asyncio.create_task(whole_stream())
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while True:
                if held.waiting == 1:
                    break
                await asyncio.sleep(0.02)
        app.state.on_shutdown_signal()  # the drain begins while the stream's plan is under way
        await on_server_loop(app, held.release())  # runs after the drain the signal scheduled
        body = await reading
    *_, retry, end = body.strip().split("\n\n")
    assert retry.startswith("retry: ")
    assert end == 'event: end\ndata: {"reason":"shutdown"}'


async def test_a_stream_that_never_starts_gives_its_slot_back(
    make_settings: Callable[..., Settings], serve: Serve, unused_port: int
) -> None:
    settings = make_settings(nats_urls=[f"nats://127.0.0.1:{unused_port}"], max_connections_per_client=1)
    async with serve(create_app(settings), ready=False) as url, httpx.AsyncClient() as client:
        for _ in range(3):  # each would be refused for the cap if one kept the one slot this client has
            answer = await client.get(f"{url}/v1/stream", params={"topic": "a.>", "last_event_id": "0"})
            assert answer.text.endswith('data: {"reason":"not_ready"}\n\n')
        assert await metric(url, "telemetry_stream_connections_active") == 0


@pytest.mark.parametrize("where", ["in its plan", "open"])
async def test_a_stream_cancelled_gives_its_slot_back(
    settings: Settings, serve: Serve, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """uvicorn cancels the requests it still serves once its graceful shutdown runs out: a cancelled stream ends, and
    gives its slot back, wherever it waits (its resume plan's JetStream round trip, or its client)."""
    held = HeldPlans()  # never released: a resume waits in its plan until cancelled
    monkeypatch.setattr(sse, "plan_resume", held.plan)
    app = create_app(settings)
    async with serve(app) as url, contextlib.AsyncExitStack() as stack:
        reader, writer = await raw_connection(url)
        stack.push_async_callback(writer.wait_closed)
        stack.callback(writer.close)
        resume = "&last_event_id=0" if where == "in its plan" else ""
        writer.write(raw_requests(f"/v1/stream?topic=a.%3E{resume}"))
        if where == "open":
            await reader.readuntil(b"\r\n\r\n")
        # Admitted and in its plan, or open, in the same step of the server's loop as its slot was counted.
        await metric_becomes(url, "telemetry_stream_connections_active", 1)
        assert held.waiting == (where == "in its plan")
        assert await on_server_loop(app, cancel_streams()) == 1
        await metric_becomes(url, "telemetry_stream_connections_active", 0)


async def cancel_streams() -> int:
    """Cancel the task of every stream the server is serving (as uvicorn does at the end of its graceful shutdown)."""
    cancelled = 0
    for task in asyncio.all_tasks():
        awaited = task.get_coro()
        while hasattr(awaited, "cr_code"):  # a future, or an awaitable of another kind, ends the chain
            if awaited.cr_code.co_qualname.startswith("EventStream."):
                task.cancel()
                cancelled += 1
                break
            awaited = awaited.cr_await
    return cancelled
