"""The stream service's app factory: one NATS link, one hub, admission, the pending budget, the ticker, the SSE
endpoint and the probes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from core.auth import CredentialPlaces, Gate
from core.cors import Cors
from core.errors import install_error_handlers
from core.frontroutes import FrontRoutedApp
from core.health import health_router
from core.jetstream import JetStreamLink
from core.settings import Settings
from stream.admission import Admission
from stream.hub import Hub
from stream.metrics import StreamMetrics
from stream.page import add_page_routes
from stream.session import session_router
from stream.slowconsumer import PendingBudget
from stream.sse import EventStream, events_router
from stream.ticker import Ticker


def quiet_cut_off(record: logging.LogRecord) -> bool:
    """uvicorn calls a stream we cut off (``Connection.abort``) an error; it is the intended outcome, logged by us."""
    return record.getMessage() != "ASGI callable returned without completing response."


def create_app(settings: Settings) -> FrontRoutedApp:
    """Build the stream service; NATS is connected in the background at start-up."""
    metrics = StreamMetrics()
    link = JetStreamLink(settings, "stream")
    link.expose(metrics.registry)
    hub = Hub(link, metrics)
    ticker = Ticker(hub.connections, settings)
    budget = PendingBudget(settings.max_pending_bytes, hub.connections)
    event_stream = EventStream(hub, Admission(settings, metrics), budget, settings)
    metrics.watch(lambda: (hub.events_sent, ticker.keepalives_sent))
    metrics.pending_bytes.set_function(lambda: budget.total)
    metrics.pending_bytes_limit.set(settings.max_pending_bytes)
    loop: asyncio.AbstractEventLoop | None = None

    def drain_soon() -> None:
        """The first shutdown signal: drain on the server's loop (a signal handler runs between any two lines)."""
        if loop is not None:
            loop.call_soon_threadsafe(event_stream.drain)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal loop
        loop = asyncio.get_running_loop()
        logging.getLogger("uvicorn.error").addFilter(quiet_cut_off)
        link.start()
        hub.start()
        ticker.start()
        yield
        await ticker.stop()
        await hub.stop()
        await link.stop()

    app = FrontRoutedApp(
        cors=Cors(settings.cors_origins),
        docs=settings.docs,
        title="Telemetry stream",
        summary="Sensor readings as Server-Sent Events, per topic pattern, resumable with Last-Event-ID.",
        version="0.1.0",
        lifespan=lifespan,
    )
    gate = Gate(settings, CredentialPlaces(cookie=settings.auth_cookie_name, query=settings.auth_query_token))
    guarded = app.add_front_route("GET", "/v1/stream", event_stream, gate)
    install_error_handlers(app)
    app.include_router(events_router(guarded))
    app.include_router(session_router(gate, settings))
    app.include_router(health_router(event_stream.not_ready_reason, metrics.registry))
    add_page_routes(app)  # the dashboard at /: always served, it holds no data
    app.state.hub = hub
    app.state.on_shutdown_signal = drain_soon
    return app
