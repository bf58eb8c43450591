"""The stream service's app factory: one NATS link, one hub, the SSE endpoint and the probes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core.errors import install_error_handlers
from core.frontroutes import FrontRoutedApp
from core.health import health_router
from core.jetstream import JetStreamLink
from core.settings import Settings
from stream.hub import Hub
from stream.metrics import StreamMetrics
from stream.sse import EventStream, events_router


def quiet_cut_off(record: logging.LogRecord) -> bool:
    """uvicorn calls a stream we cut off (a slow consumer) an error; it is the intended outcome, logged by us."""
    return record.getMessage() != "ASGI callable returned without completing response."


def create_app(settings: Settings) -> FrontRoutedApp:
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

    app = FrontRoutedApp(
        title="Telemetry stream",
        summary="Sensor readings as Server-Sent Events, per topic pattern, resumable with Last-Event-ID.",
        version="0.1.0",
        lifespan=lifespan,
    )
    event_stream = EventStream(hub, settings)
    app.front_routes[("GET", "/v1/stream")] = event_stream
    install_error_handlers(app)
    app.include_router(events_router(event_stream))
    app.include_router(health_router(hub.not_ready_reason, metrics.registry))
    app.state.hub = hub
    app.state.on_shutdown_signal = hub.request_drain
    return app
