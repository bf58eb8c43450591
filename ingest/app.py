"""The ingest service's app factory: ``POST /v1/readings``, the probes and the metrics, on one NATS link."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from core.auth import CredentialPlaces, Gate
from core.cors import Cors
from core.errors import install_error_handlers
from core.frontroutes import FrontRoutedApp
from core.health import health_router
from core.jetstream import JetStreamLink
from core.redact import redact_urls
from core.settings import Settings
from core.tallies import TalliedHistogram
from ingest.drain import DrainedRequest
from ingest.endpoint import ReadingsEndpoint, readings_router
from ingest.metrics import IngestMetrics
from ingest.publisher import Publisher
from ingest.ratelimit import DeviceRateLimiter

log = structlog.get_logger(__name__)

READINGS_PATH = "/v1/readings"


class IngestApp(FrontRoutedApp):
    """The ingest service's app: an answer given before the request's body ended drains the rest (ingest/drain.py)."""

    def __init__(self, settings: Settings, request_seconds: TalliedHistogram, **kwargs: Any) -> None:
        super().__init__(cors=Cors(settings.cors_origins), docs=settings.docs, **kwargs)
        self.discard_max_bytes = settings.discard_max_bytes
        self.discard_timeout_s = settings.discard_timeout_s
        self.request_seconds = request_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = DrainedRequest(scope, receive, send, self.discard_max_bytes, self.discard_timeout_s)
        if scope["path"] != READINGS_PATH or scope["method"] != "POST":
            await super().__call__(scope, request.receive, request.send)
            return
        # Timed here, before the gate: a refused request's time counts too, and so does draining an early answer's
        # unread body (the answer ends after it).
        started = time.perf_counter()
        try:
            await super().__call__(scope, request.receive, request.send)
        finally:
            self.request_seconds.observe(time.perf_counter() - started)


def create_app(settings: Settings) -> IngestApp:
    """Build the ingest service; NATS is connected in the background at start-up."""
    metrics = IngestMetrics()
    link = JetStreamLink(settings, "ingest")
    link.expose(metrics.registry)
    publisher = Publisher(link, settings, metrics)
    limiter = rate_limiter(settings)
    if limiter is not None:
        metrics.track_devices(limiter.__len__)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        link.start()
        log.info(
            "ingest_started",
            nats_urls=redact_urls(settings.nats_urls),
            stream=settings.stream_name,
            subject_prefix=settings.subject_prefix,
            auth=settings.auth,
            max_body_bytes=settings.max_body_bytes,
            max_batch=settings.max_batch,
            max_in_flight=settings.max_in_flight,
            publish_timeout_s=settings.publish_timeout_s,
            ingest_rate_per_device_per_s=settings.ingest_rate_per_device_per_s,
        )
        try:
            yield
        finally:
            await link.stop()

    app = IngestApp(
        settings,
        metrics.request_seconds,
        title="Telemetry ingest",
        summary="Devices POST sensor readings; each is answered only once JetStream stored it.",
        version="0.1.0",
        lifespan=lifespan,
    )
    # No cookie: a cookie that lets a page POST readings would let any other site's page do it too (CSRF).
    gate = Gate(settings, CredentialPlaces())
    endpoint = ReadingsEndpoint(settings, publisher, limiter, metrics)
    guarded = app.add_front_route("POST", READINGS_PATH, endpoint, gate, metrics.refused_at_gate)
    install_error_handlers(app)
    app.include_router(readings_router(guarded, settings.max_batch))
    app.include_router(health_router(link.not_ready_reason, metrics.registry))
    app.state.link = link
    app.state.publisher = publisher
    return app


def rate_limiter(settings: Settings) -> DeviceRateLimiter | None:
    """The per-device rate limit the settings ask for, or None when it is off."""
    if not settings.ingest_rate_per_device_per_s:
        return None
    return DeviceRateLimiter(
        settings.ingest_rate_per_device_per_s, settings.ingest_burst_per_device, settings.ingest_rate_max_devices
    )
