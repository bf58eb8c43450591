"""The stream service's app factory: one NATS link, one hub, the SSE endpoint and the probes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from core.errors import install_error_handlers
from core.health import health_router
from core.jetstream import JetStreamLink
from core.settings import Settings
from stream.hub import Hub
from stream.metrics import StreamMetrics
from stream.sse import EventStream, events_router

STREAM_PATH = "/v1/stream"


def quiet_cut_off(record: logging.LogRecord) -> bool:
    """uvicorn calls a stream we cut off (a slow consumer) an error; it is the intended outcome, logged by us."""
    return record.getMessage() != "ASGI callable returned without completing response."


class StreamService(FastAPI):
    """FastAPI, with ``GET /v1/stream`` served before its middleware and routing (see stream/sse.py)."""

    event_stream: EventStream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == STREAM_PATH and scope["method"] == "GET":
            await self.event_stream(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> StreamService:
    """Build the stream service; NATS is connected in the background at start-up."""
    metrics = StreamMetrics()
    link = JetStreamLink(settings, "stream")
    hub = Hub(link, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.error").addFilter(quiet_cut_off)
        link.start()
        hub.start()
        yield
        await hub.stop()
        await link.stop()

    app = StreamService(
        title="Telemetry stream",
        summary="Sensor readings as Server-Sent Events, per topic pattern, resumable with Last-Event-ID.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.event_stream = EventStream(hub, settings)
    install_error_handlers(app)
    app.include_router(events_router(app.event_stream))
    app.include_router(health_router(hub.not_ready_reason, metrics.registry))
    app.state.hub = hub
    app.state.on_shutdown_signal = hub.request_drain
    return app
