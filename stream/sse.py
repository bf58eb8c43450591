"""``GET /v1/stream``: topic patterns in, Server-Sent Events out, resumable with ``Last-Event-ID``.

``EventStream`` is a plain ASGI endpoint served in front of FastAPI's routing and middleware, behind the
service's gate (core/frontroutes.py), whose per-message wrappers of ``send`` would cost more than the write of an
event itself. The FastAPI route below documents it in the OpenAPI schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable
from typing import Annotated, Literal

import nats.errors
import structlog
from fastapi import APIRouter, Header, Query, Response
from pydantic import StringConstraints
from starlette.types import ASGIApp, Receive, Scope, Send

from core.auth import Forbidden, Grant
from core.errors import ApiError, error_responses
from core.frontroutes import ServedBy
from core.readings import control_frame, format_ts, retry_frame
from core.settings import Settings
from core.topics import PATTERN_GRAMMAR
from stream.admission import Admission
from stream.connection import Connection
from stream.hub import Hub
from stream.limits import jittered
from stream.replay import ResumePlan, plan_resume, plan_since, replay
from stream.request import EVENT_ID_GRAMMAR, SINCE_GRAMMAR, StreamRequest
from stream.slowconsumer import PendingBudget
from stream.snapshot import send_latest, send_latest_before

log = structlog.get_logger(__name__)

LIFETIME_JITTER = 0.1
# ``Connection: close``: a request pipelined behind a stream is never served (uvicorn closes the
# connection once the stream ends); an EventSource opens a connection of its own for each stream.
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"close"),
]


class EventStream:
    """The SSE endpoint as an ASGI app: admission, then the stream's connection on the process's hub and budget."""

    def __init__(self, hub: Hub, admission: Admission, budget: PendingBudget, settings: Settings) -> None:
        self.hub = hub
        self.admission = admission
        self.budget = budget
        self.settings = settings
        # Bound once for every connection: a bound method made per stream is 64 bytes held by each open one.
        self._mark_dirty = hub.mark_dirty
        self._count_written = hub.count_written

    def __call__(self, scope: Scope, receive: Receive, send: Send, grant: Grant) -> Awaitable[None]:
        """Checks in order: credentials (the gate's 401), the request (400), its patterns against the grant (403),
        then admission: a client refused for who it is takes no connection slot.

        Not a coroutine: it returns the awaitable that answers, for an admitted stream ``_serve``, which gives the slot
        back however it ends. A coroutine of its own would stay suspended above the stream's for as long as it is open,
        a frame for every open stream (bench idle memory).
        """
        try:
            request = StreamRequest.from_scope(scope, self.settings)
            check_patterns(request, grant)
        except ApiError as err:
            return err.response()(scope, receive, send)
        refusal = self.admission.admit(request.client)
        if refusal is not None:
            log_refused(request, refusal)
            return refused_stream(refusal, self.settings.overload_retry_ms)(scope, receive, send)
        return self._serve(request, grant.expires_at, scope, receive, send)

    def drain(self) -> None:
        """Shutting down: refuse new streams, and end every open one with a short jittered ``retry``."""
        if self.admission.drain():
            log.info("draining", connections=len(self.hub.connections))
            for connection in list(self.hub.connections):
                self._shut(connection)

    def not_ready_reason(self) -> str | None:
        """Why new streams cannot be served (``/readyz``), or None."""
        return "shutting down" if self.admission.draining else self.hub.not_ready_reason()

    def _shut(self, connection: Connection) -> None:
        connection.end("shutdown", retry_ms=jittered(self.settings.overload_retry_ms))

    async def _plan(self, request: StreamRequest) -> ResumePlan | None:
        """The replay plan of a resume or of since= (None: the stream starts live, or with its snapshot)."""
        if self.hub.not_ready_reason() is not None:
            raise Unservable("not_ready")
        link = self.hub.link
        try:
            if request.resume_after is not None:
                plan = await plan_resume(link, request.resume_after)
            elif request.since is not None:
                plan = await plan_since(link, request.since)
            else:
                plan = None
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("stream_start_failed", error=str(err) or repr(err))
            raise Unservable("unavailable") from None
        if plan is not None and plan.reset_reason is not None:
            self.hub.metrics.resets.labels(reason=plan.reset_reason).inc()
        return plan

    async def _serve(
        self, request: StreamRequest, expires_at: float, scope: Scope, receive: Receive, send: Send
    ) -> None:
        """An admitted stream, from its resume plan until it ends, the client leaves, or the task is cancelled; its
        admission slot is given back however it ends. Logged once as it opens and once as it closes (with the
        request's id, bound by core/frontroutes.py).

        The one coroutine of the stream that stays suspended while it is open: what only its start or its end needs is
        made there (``_connection``, ``_log_opened``, ``_log_closed``), not kept in its locals by every open stream.
        """
        try:
            try:
                plan = await self._plan(request)
            except Unservable as err:  # a 200 that says come back: any other answer makes an EventSource give up
                self.hub.metrics.refused.labels(reason=err.reason).inc()
                log_refused(request, err.reason)
                await refused_stream(err.reason, self.settings.retry_ms)(scope, receive, send)
                return
            # Everything that reads the request's headers has read them (request id, CORS, the gate, Last-Event-ID),
            # and uvicorn holds this list, its parser's own, for as long as the stream is open: a browser's (cookie,
            # user agent, client hints) is 2-4 KB of every open stream. Emptied in place: a new list would free nothing.
            scope["headers"].clear()
            opened_at = time.monotonic()
            connection = self._connection(request, plan, opened_at, expires_at)
            live_from = self.hub.add(connection)
            if self.admission.draining:  # it began during the resume plan, after this stream was admitted
                self._shut(connection)
            self._log_opened(request)
            replaying: asyncio.Task[None] | None = None
            client_left = False
            try:
                # The head goes out once the live feed carries the stream: a client that has it misses no later
                # reading.
                if not isinstance(live_from, int):
                    live_from = await live_from
                await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
                if connection.replaying:
                    replaying = asyncio.create_task(self._catch_up(connection, request.snapshot, plan, live_from))
                connection.open(send)
                # uvicorn answers http.disconnect when the client goes, or once we completed the response;
                # when it cannot tell (see fastwrite.transport_closing), the connection's abort wakes us.
                while (await receive())["type"] != "http.disconnect":
                    pass
                client_left = True  # or the response completed: then the stream has its end_reason
            except asyncio.CancelledError:
                # abort() cancels this task to end the stream now; any other cancellation goes on.
                me = asyncio.current_task()
                assert me is not None
                if not connection.closed or me.uncancel() > 0:
                    raise
            finally:
                connection.close()
                self.hub.remove(connection)
                self._log_closed(request, connection, opened_at, client_left)
                if replaying is not None:
                    replaying.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await replaying
        finally:
            self.admission.release(request.client)

    def _connection(
        self, request: StreamRequest, plan: ResumePlan | None, opened_at: float, expires_at: float
    ) -> Connection:
        """The stream's connection with its deadlines, its abort, and the frames that go out first."""
        connection = Connection(
            request.patterns,
            last_seq=plan.start_after if plan and not request.snapshot else 0,
            replaying=plan is not None or request.snapshot,
            limits=request.limits,
            mark_dirty=self._mark_dirty,
            budget=self.budget,
            metrics=self.hub.metrics,
        )
        connection.on_written = self._count_written
        lifetime_s = self.settings.max_lifetime_s * (1 - LIFETIME_JITTER * random.random())
        if lifetime_s > 0:
            connection.end_at(opened_at + lifetime_s, "max_lifetime")
        connection.end_at(opened_at + expires_at - time.time(), "token_expired")  # the client comes back with a new one
        me = asyncio.current_task()
        assert me is not None
        connection.on_abort = me.cancel  # wakes the stream's handler wherever it waits: see _serve
        # Queued before the first await: a drain's retry and end, which may come during it, go after them.
        connection.push(retry_frame(self.settings.retry_ms))
        reset = plan.reset_frame() if plan is not None else None
        if reset is not None:
            connection.push(reset)
        return connection

    def _log_opened(self, request: StreamRequest) -> None:
        """Counted, and the ``stream_opened`` line."""
        metrics = self.hub.metrics
        metrics.connections.inc()
        started = how_it_starts(request)
        metrics.starts[str(started["start"])].inc()
        log.info("stream_opened", patterns=pattern_texts(request), **started, client=request.client)

    def _log_closed(self, request: StreamRequest, connection: Connection, opened_at: float, client_left: bool) -> None:
        """Counted by its reason, and the ``stream_closed`` line."""
        if connection.end_reason is not None:
            self.hub.metrics.ended.labels(reason=connection.end_reason).inc()
        log.info(
            "stream_closed",
            duration_s=round(time.monotonic() - opened_at, 3),
            events=connection.sent_events,
            bytes=connection.sent_bytes,
            reason=connection.end_reason or ("client_gone" if client_left else "interrupted"),
            patterns=pattern_texts(request),
            client=request.client,
        )

    async def _catch_up(self, connection: Connection, snapshot: bool, plan: ResumePlan | None, live_from: int) -> None:
        """The snapshot, then the replay, then the live readings held meanwhile."""
        link, limit = self.hub.link, self.settings.max_snapshot_topics
        try:
            async with self.hub.replay_slots:
                if snapshot and plan is None:
                    await send_latest(link, connection, live_from, limit)
                elif snapshot and plan is not None:
                    await send_latest_before(link, connection, plan.start_after + 1, live_from, limit)
                if plan is not None:
                    await replay(link, connection, plan.start_after, live_from)
        except (TimeoutError, nats.errors.Error) as err:
            log.warning("replay_failed", error=str(err) or repr(err), start_after=plan.start_after if plan else None)
            connection.end("replay_failed", retry_ms=jittered(self.settings.retry_ms))
            return
        connection.finish_replay()


class Unservable(Exception):
    """A stream that cannot be served now (the service is not ready, or JetStream could not be read)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def check_patterns(request: StreamRequest, grant: Grant) -> None:
    """403 naming the first requested pattern the credentials do not cover, before any stream starts."""
    for pattern in request.patterns:
        if not grant.may_subscribe(pattern):
            raise Forbidden(
                f"these credentials may not follow {str(pattern)!r}: no subscribe pattern of theirs covers it",
                field="topic",
            )


def how_it_starts(request: StreamRequest) -> dict[str, object]:
    """``start`` of the ``stream_opened`` line: ``live``, ``resume`` (after ``resume_after``), ``since`` (a time), or
    ``snapshot`` (as of ``since`` when given)."""
    if request.resume_after is not None:
        return {"start": "resume", "resume_after": request.resume_after}
    start = "snapshot" if request.snapshot else "live" if request.since is None else "since"
    return {"start": start} if request.since is None else {"start": start, "since": format_ts(request.since)}


def log_refused(request: StreamRequest, reason: str) -> None:
    """The one line of a stream refused after its checks passed: a cap, a drain, or the service not ready."""
    log.info("stream_refused", reason=reason, patterns=pattern_texts(request), client=request.client)


def pattern_texts(request: StreamRequest) -> list[str]:
    """The request's patterns as its log lines name them (made for each line: an open stream holds none of them)."""
    return [str(pattern) for pattern in request.patterns]


def refused_stream(reason: str, retry_ms: int) -> Response:
    """A 200 that tells an ``EventSource`` to come back later (any other status makes it give up for good)."""
    body = retry_frame(jittered(retry_ms)) + control_frame("end", {"reason": reason})
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return Response(body, headers=headers, media_type="text/event-stream")


def events_router(endpoint: ASGIApp) -> APIRouter:
    """The documented route of the SSE endpoint (its parameters, for /docs)."""
    router = APIRouter(tags=["stream"])

    @router.get(
        "/v1/stream",
        summary="Follow readings as Server-Sent Events",
        response_class=Response,
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": (
                    "Events: reading, reset, end. A stream that cannot be served yet (the service is starting, or "
                    "JetStream cannot be read) is a 200 too: a retry hint and an 'end' event (not_ready, "
                    "unavailable), as any other status makes a browser's EventSource give up for good."
                ),
            },
            **error_responses(
                {
                    400: "Bad topic pattern, event id or limit.",
                    401: "Auth is required and no valid token was sent (WWW-Authenticate: Bearer).",
                    403: "A topic pattern is not covered by the token's subscribe patterns.",
                }
            ),
        },
    )
    async def stream_events(
        topic: Annotated[
            list[Annotated[str, StringConstraints(pattern=PATTERN_GRAMMAR)]],
            Query(description="Topic pattern (site.device.metric, '*' one token, final '>' the rest)"),
        ],
        last_event_id: Annotated[
            str | None,
            Query(
                pattern=EVENT_ID_GRAMMAR,
                description="Resume after this event id on the first connect (0: from the start); not with since or "
                "snapshot",
            ),
        ] = None,
        since: Annotated[
            str | None,
            Query(
                pattern=SINCE_GRAMMAR,
                description="Replay from this time: RFC 3339 with its offset, or back from now (-90s, -15m, -2h, -7d)",
            ),
        ] = None,
        snapshot: Annotated[
            Literal["latest"] | None,
            Query(description="First the latest reading of every matching topic (before 'since' when given)"),
        ] = None,
        rate: Annotated[
            float | None, Query(gt=0, description="Most reading events per second (lowers the server's maximum)")
        ] = None,
        max_events: Annotated[
            int | None, Query(gt=0, description="End the stream after this many events (lowers the server's maximum)")
        ] = None,
        last_event_id_header: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID", pattern=EVENT_ID_GRAMMAR, description="Sent by EventSource when it reconnects"
            ),
        ] = None,
        access_token: Annotated[
            str | None,
            Query(description="Token, read only with auth_query_token on; else 'Authorization: Bearer' or the cookie"),
        ] = None,
    ) -> Response:
        return ServedBy(endpoint)

    return router
