"""The ingest service's app factory: ``POST /v1/readings``, the probes and the metrics, on one NATS link."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from core.errors import ApiError, install_error_handlers
from core.health import health_router
from core.jetstream import JetStreamLink
from core.readings import Reading
from core.settings import Settings
from ingest.body import read_readings
from ingest.metrics import IngestMetrics
from ingest.publisher import Publisher, Stored

log = structlog.get_logger(__name__)


class Accepted(BaseModel):
    """The 202 answer: one result per reading, in request order (also for a single reading)."""

    results: list[Stored]


def create_app(settings: Settings) -> FastAPI:
    """Build the ingest service; NATS is connected in the background at start-up."""
    metrics = IngestMetrics()
    link = JetStreamLink(settings, "ingest")
    publisher = Publisher(link, settings, metrics)

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
            publish_timeout_s=settings.publish_timeout_s,
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
    app.include_router(readings_router(settings, publisher, metrics))
    app.include_router(health_router(link.not_ready_reason, metrics.registry))
    app.state.link = link
    app.state.publisher = publisher
    return app


def readings_router(settings: Settings, publisher: Publisher, metrics: IngestMetrics) -> APIRouter:
    """``POST /v1/readings``: validate the whole request, publish it, answer once JetStream acknowledged all."""
    router = APIRouter(tags=["readings"])

    @router.post(
        "/v1/readings",
        status_code=202,
        response_model=Accepted,
        summary="Store one reading (an object) or a batch (an array)",
        openapi_extra={"requestBody": request_body_schema(settings.max_batch)},
        responses={
            400: {"description": "The body is not UTF-8 JSON"},
            413: {"description": "The body is larger than max_body_bytes"},
            415: {"description": "Content-Type is not application/json"},
            422: {"description": "A reading is invalid (each listed in details), or the batch is empty or too long"},
            503: {"description": "JetStream unavailable or too slow; retry after Retry-After with the same ids"},
        },
    )
    async def post_readings(request: Request) -> JSONResponse:
        # The raw request, not a typed body parameter: the size limit, the media type and the error
        # shape are ours, and the body is validated in one pass against a TypeAdapter.
        try:
            readings = await read_readings(request, settings)
            stored = await publisher.publish(readings)
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
    """The documented body: a reading or an array of readings (the endpoint reads the raw body itself)."""
    reading = Reading.model_json_schema()
    batch = {"type": "array", "items": reading, "minItems": 1, "maxItems": max_batch}
    return {"required": True, "content": {"application/json": {"schema": {"anyOf": [reading, batch]}}}}
