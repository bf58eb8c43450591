"""``GET /v1/stream``: topic patterns in, Server-Sent Events out, resumable with ``Last-Event-ID``."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import nats.errors
import structlog
from fastapi import APIRouter, Header, Query, Response
from starlette.types import Receive, Scope, Send

from core.errors import InvalidParameter, ServiceUnavailable
from core.readings import KEEPALIVE_FRAME, control_frame, retry_frame
from core.settings import Settings
from core.topics import InvalidPattern, Pattern
from stream.connection import Connection
from stream.hub import Hub
from stream.replay import ResumePlan, plan_resume, replay

log = structlog.get_logger(__name__)

MAX_EVENT_ID_DIGITS = 19
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


class EventStreamResponse(Response):
    """Writes a connection's frames as they come; keep-alive comments when quiet.

    Not a StreamingResponse: the frames are bytes already, joined into one write when several are
    pending, and the client's disconnect is watched directly on ``receive``.
    """

    media_type = "text/event-stream"

    def __init__(self, hub: Hub, connection: Connection, plan: ResumePlan | None, settings: Settings) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(SSE_HEADERS)
        self.hub = hub
        self.connection = connection
        self.plan = plan
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        connection, metrics = self.connection, self.hub.metrics
        live_from = self.hub.add(connection)
        metrics.connections.inc()
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
        finally:
            connection.close()
            self.hub.remove(connection)
            for task in (watcher, replaying):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    async def _replay(self, start_after: int, upto: int) -> None:
        try:
            count = await replay(self.hub.link, self.connection, start_after, upto)
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("replay_failed", error=str(err) or repr(err), start_after=start_after)
            self.connection.end(control_frame("end", {"reason": "replay_failed", "retry": True}))
            return
        self.hub.metrics.replayed_events.inc(count)
        self.connection.finish_replay()

    async def _write(self, send: Send) -> None:
        connection, metrics = self.connection, self.hub.metrics
        keepalive_s = self.settings.keepalive_s
        while not connection.closed:
            if connection.frames:
                data, readings = connection.take()
                await send({"type": "http.response.body", "body": data, "more_body": True})
                metrics.events_sent.inc(readings)
                if connection.ending:
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
                    return
                continue
            try:
                await asyncio.wait_for(connection.wakeup.wait(), keepalive_s)
            except TimeoutError:
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
            400: {"description": "Bad topic pattern or event id."},
            503: {"description": "Not connected to JetStream; retry after Retry-After."},
        },
    )
    async def stream_events(
        topic: Annotated[
            list[str], Query(description="Topic pattern (site.device.metric, '*' one token, final '>' the rest)")
        ],
        last_event_id: Annotated[
            str | None, Query(description="Resume after this event id on the first connect; 0 = from the start")
        ] = None,
        last_event_id_header: Annotated[
            str | None, Header(alias="Last-Event-ID", description="Sent by EventSource when it reconnects")
        ] = None,
    ) -> EventStreamResponse:
        patterns = parse_patterns(topic, settings.max_patterns)
        if last_event_id_header is not None:
            requested = parse_event_id(last_event_id_header, "Last-Event-ID")
        else:
            requested = parse_event_id(last_event_id, "last_event_id")
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
        connection = Connection(patterns, last_seq=plan.start_after if plan else 0, replaying=plan is not None)
        return EventStreamResponse(hub, connection, plan, settings)

    return router
