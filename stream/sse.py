"""``GET /v1/stream``: topic patterns in, Server-Sent Events out, resumable with ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Annotated

import nats.errors
import structlog
from fastapi import APIRouter, Header, Query, Request, Response
from starlette.types import Receive, Scope, Send

from core.errors import InvalidParameter, ServiceUnavailable
from core.readings import KEEPALIVE_FRAME, control_frame, retry_frame
from core.settings import Settings
from core.topics import InvalidPattern, Pattern
from stream.connection import Connection
from stream.hub import Hub
from stream.limits import Limits, jittered
from stream.replay import ResumePlan, plan_resume, replay

log = structlog.get_logger(__name__)

MAX_EVENT_ID_DIGITS = 19
LIFETIME_JITTER = 0.1
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


def parse_patterns(values: list[str], limit: int) -> list[Pattern]:
    """The ``topic`` parameters as patterns; 400 naming the parameter on the first bad one."""
    if len(values) > limit:
        raise InvalidParameter(f"at most {limit} topic patterns per connection", field="topic")
    try:
        return list(dict.fromkeys(Pattern.parse(value) for value in values))
    except InvalidPattern as err:
        raise InvalidParameter(str(err), field="topic") from None


def parse_event_id(value: str | None, field: str) -> int | None:
    """A ``Last-Event-ID``: our ids are stream sequences, so anything but a non-negative integer is a 400."""
    if value is None:
        return None
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_EVENT_ID_DIGITS:
        raise InvalidParameter(
            f"{field} must be a non-negative integer (an event id this service sent), not {value[:40]!r}", field=field
        )
    return int(text)


def connection_limits(settings: Settings, rate: float | None, max_events: int | None) -> Limits:
    """The server's maxima, lowered (never raised) by what the client asked for."""
    events = settings.max_events
    if max_events is not None:
        events = max_events if events == 0 else min(events, max_events)
    return Limits(
        rate_per_s=min(settings.max_rate_per_s, rate) if rate is not None else settings.max_rate_per_s,
        max_events=events,
        max_buffer_bytes=settings.max_buffer_bytes,
        slow_consumer_timeout_s=settings.slow_consumer_timeout_s,
    )


def refused_stream(reason: str, retry_ms: int) -> Response:
    """A 200 that tells an ``EventSource`` to come back later (any other status makes it give up for good)."""
    body = b"retry: %d\n\n" % jittered(retry_ms) + control_frame("end", {"reason": reason})
    return Response(
        body, headers={"cache-control": "no-cache", "x-accel-buffering": "no"}, media_type="text/event-stream"
    )


class EventStreamResponse(Response):
    """Writes a connection's frames as they come; keep-alive comments when quiet; ends at the limits.

    Not a StreamingResponse: the frames are bytes already, joined into one write when several are
    pending, and the client's disconnect is watched directly on ``receive``.
    """

    media_type = "text/event-stream"

    def __init__(
        self, hub: Hub, connection: Connection, plan: ResumePlan | None, client: str, settings: Settings
    ) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)
        self.hub = hub
        self.connection = connection
        self.plan = plan
        self.client = client
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection, metrics = self.connection, self.hub.metrics
        live_from = self.hub.add(connection, self.client)
        metrics.connections.inc()
        me = asyncio.current_task()
        assert me is not None

        def cut_off() -> None:
            me.cancel()

        connection.on_stuck = cut_off
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        replaying: asyncio.Task[None] | None = None
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            connection.push(retry_frame(self.settings.retry_ms))
            if self.plan is not None:
                reset = self.plan.reset_frame()
                if reset is not None:
                    connection.push(reset)
                replaying = asyncio.create_task(self._replay(self.plan.start_after, live_from))
            await self._write(send)
        except asyncio.CancelledError:
            if connection.end_reason != "slow_consumer":
                raise
            me.uncancel()
            log.info("slow_consumer_disconnected", client=self.client)
        finally:
            connection.close()
            self.hub.remove(connection, self.client)
            if connection.end_reason is not None:
                metrics.ended.labels(reason=connection.end_reason).inc()
            for task in (watcher, replaying):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _replay(self, start_after: int, upto: int) -> None:
        try:
            async with self.hub.replay_slots:
                count = await replay(self.hub.link, self.connection, start_after, upto)
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("replay_failed", error=str(err) or repr(err), start_after=start_after)
            self.connection.end("replay_failed", retry_ms=jittered(self.settings.retry_ms))
            return
        self.hub.metrics.replayed_events.inc(count)
        self.connection.finish_replay()

    async def _write(self, send: Send) -> None:
        connection, metrics = self.connection, self.hub.metrics
        keepalive_s = self.settings.keepalive_s
        loop = asyncio.get_running_loop()
        lifetime_s = self.settings.max_lifetime_s * (1 - LIFETIME_JITTER * random.random())
        deadline = loop.time() + lifetime_s if lifetime_s > 0 else float("inf")
        while not connection.closed:
            if connection.frames:
                data, readings = connection.take()
                await send({"type": "http.response.body", "body": data, "more_body": True})
                connection.written()
                metrics.events_sent.inc(readings)
                if connection.ending and not connection.frames:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                continue
            wait_s = min(keepalive_s, deadline - loop.time())
            if wait_s <= 0:
                connection.end("max_lifetime")
                continue
            try:
                await asyncio.wait_for(connection.wakeup.wait(), wait_s)
            except TimeoutError:
                if loop.time() < deadline:
                    connection.push(KEEPALIVE_FRAME)
                    metrics.keepalives.inc()

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.connection.close()


def events_router(hub: Hub, settings: Settings) -> APIRouter:
    """The SSE endpoint, bound to the process's hub."""
    router = APIRouter(tags=["stream"])

    @router.get(
        "/v1/stream",
        summary="Follow readings as Server-Sent Events",
        response_class=EventStreamResponse,
        responses={
            200: {"content": {"text/event-stream": {}}, "description": "Events: reading, reset, end."},
            400: {"description": "Bad topic pattern, event id or limit."},
            503: {"description": "Not connected to JetStream; retry after Retry-After."},
        },
    )
    async def stream_events(
        request: Request,
        topic: Annotated[
            list[str], Query(description="Topic pattern (site.device.metric, '*' one token, final '>' the rest)")
        ],
        last_event_id: Annotated[
            str | None, Query(description="Resume after this event id on the first connect; 0 = from the start")
        ] = None,
        rate: Annotated[
            float | None, Query(gt=0, description="Most reading events per second (lowers the server's maximum)")
        ] = None,
        max_events: Annotated[
            int | None, Query(gt=0, description="End the stream after this many events (lowers the server's maximum)")
        ] = None,
        last_event_id_header: Annotated[
            str | None, Header(alias="Last-Event-ID", description="Sent by EventSource when it reconnects")
        ] = None,
    ) -> Response:
        patterns = parse_patterns(topic, settings.max_patterns)
        if last_event_id_header is not None:
            requested = parse_event_id(last_event_id_header, "Last-Event-ID")
        else:
            requested = parse_event_id(last_event_id, "last_event_id")
        limits = connection_limits(settings, rate, max_events)
        client = request.client.host if request.client else "unknown"
        refusal = hub.refusal(client)
        if refusal is not None:
            hub.metrics.refused.labels(reason=refusal).inc()
            return refused_stream(refusal, settings.overload_retry_ms)
        reason = hub.not_ready_reason()
        if reason is not None:
            raise ServiceUnavailable(f"stream service not ready: {reason}", retry_after_s=settings.retry_after_s)
        plan = None
        if requested is not None:
            try:
                plan = await plan_resume(hub.link, requested)
            except (TimeoutError, nats.errors.Error) as err:
                raise ServiceUnavailable(
                    f"cannot read the stream to resume: {err or type(err).__name__}",
                    retry_after_s=settings.retry_after_s,
                ) from None
            if plan.reset_reason is not None:
                hub.metrics.resets.labels(reason=plan.reset_reason).inc()
        connection = Connection(
            patterns,
            last_seq=plan.start_after if plan else 0,
            replaying=plan is not None,
            limits=limits,
            on_conflated=hub.metrics.conflated.inc,
        )
        return EventStreamResponse(hub, connection, plan, client, settings)

    return router
