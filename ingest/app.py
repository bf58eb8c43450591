"""The ingest service's app factory: ``POST /v1/readings``, the probes and the metrics, on one NATS link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from core.errors import ApiError, ServiceUnavailable, install_error_handlers
from core.health import health_router
from core.jetstream import JetStreamLink
from core.readings import Reading
from core.settings import Settings
from ingest.body import BodyFormat
from ingest.metrics import IngestMetrics
from ingest.parse import read_readings
from ingest.publisher import Publisher, Stored
from ingest.ratelimit import DeviceRateLimiter, device_counts

log = structlog.get_logger(__name__)


class Accepted(BaseModel):
    """The 202 answer: one result per reading, in request order (also for a single reading)."""

    results: list[Stored]


def create_app(settings: Settings) -> FastAPI:
    """Build the ingest service; NATS is connected in the background at start-up."""
    metrics = IngestMetrics()
    link = JetStreamLink(settings, "ingest")
    publisher = Publisher(link, settings, metrics)
    limiter = rate_limiter(settings)
    if limiter is not None:
        metrics.track_devices(limiter.__len__)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        link.start()
        log.info(
            "ingest_started",
            nats_urls=settings.nats_urls,
            stream=settings.stream_name,
            subject_prefix=settings.subject_prefix,
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

    app = FastAPI(
        title="Telemetry ingest",
        summary="Devices POST sensor readings; each is answered only once JetStream stored it.",
        version="0.1.0",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(readings_router(settings, publisher, limiter, metrics))
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


def readings_router(
    settings: Settings, publisher: Publisher, limiter: DeviceRateLimiter | None, metrics: IngestMetrics
) -> APIRouter:
    """``POST /v1/readings``: validate the whole request, check the devices' rates, publish it, answer once
    JetStream acknowledged all."""
    router = APIRouter(tags=["readings"])

    async def store(readings: list[Reading]) -> list[Stored]:
        if limiter is None:
            return await publisher.publish(readings)
        counts = device_counts(readings)
        limiter.take(counts)
        try:
            return await publisher.publish(readings)
        except ServiceUnavailable:
            limiter.give_back(counts)  # nothing (or not all) was stored: the device's retry must not pay twice
            raise

    @router.post(
        "/v1/readings",
        status_code=202,
        response_model=Accepted,
        summary="Store one reading (an object) or a batch (a JSON array, or NDJSON); gzip accepted",
        openapi_extra={"requestBody": request_body_schema(settings.max_batch)},
        responses={
            400: {"description": "The body is not UTF-8 JSON (or NDJSON), or not valid gzip"},
            413: {"description": "The body is larger than max_body_bytes, or max_inflated_bytes once inflated"},
            415: {"description": "Content-Type is not JSON or NDJSON, or Content-Encoding is not gzip"},
            422: {"description": "A reading is invalid (each listed in details), or the batch is empty or too long"},
            429: {"description": "A device sent more than its rate; nothing stored; retry all after Retry-After"},
            503: {"description": "JetStream unavailable or too slow; retry after Retry-After with the same ids"},
        },
    )
    async def post_readings(request: Request) -> JSONResponse:
        # The raw request, not a typed body parameter: the size limit, the media type and the error
        # shape are ours, and the body is validated in one pass against a TypeAdapter.
        try:
            stored = await store(await read_readings(request, settings))
        except ApiError as err:
            metrics.answered(err.status)
            raise
        except Exception:
            metrics.answered(500)
            raise
        metrics.answered(202)
        results = [{"topic": s.topic, "seq": s.seq, "duplicate": s.duplicate} for s in stored]
        return JSONResponse({"results": results}, status_code=202)

    return router


def request_body_schema(max_batch: int) -> dict[str, Any]:
    """The documented body: a reading, an array of readings, or NDJSON (the endpoint reads the raw body itself)."""
    reading = Reading.model_json_schema()
    batch = {"type": "array", "items": reading, "minItems": 1, "maxItems": max_batch}
    lines = {
        "type": "string",
        "description": f"NDJSON: one reading (a JSON object as above) per line, at most {max_batch} lines",
    }
    content = {
        BodyFormat.JSON.value: {"schema": {"anyOf": [reading, batch]}},
        BodyFormat.NDJSON.value: {"schema": lines},
    }
    return {"required": True, "content": content}
