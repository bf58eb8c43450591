"""``POST /v1/readings``: validate the whole request, check the devices' rates, publish it, and answer
once JetStream acknowledged every reading.

``ReadingsEndpoint`` is a plain ASGI endpoint served in front of FastAPI's middleware and routing, behind
the service's gate (core/frontroutes.py); the FastAPI route below documents it in the OpenAPI schema.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send

from core.auth import Forbidden, Grant
from core.errors import ApiError, ServiceUnavailable, error_responses
from core.frontroutes import ServedBy
from core.readings import Reading
from core.settings import Settings
from ingest.body import BodyFormat, BodyHeaders
from ingest.metrics import IngestMetrics
from ingest.parse import read_readings
from ingest.publisher import Publisher, Stored
from ingest.ratelimit import DeviceRateLimiter, RateLimited, device_counts

MAX_NAMED_READINGS = 100
JSON_CONTENT_TYPE = (b"content-type", b"application/json")


class Accepted(BaseModel):
    """The 202 answer: one result per reading, in request order (also for a single reading)."""

    results: list[Stored]


def accepted_body(stored: list[Stored]) -> bytes:
    """The 202 answer's JSON (``Accepted``), as compact as JSONResponse writes it, from bytes formatted in one go
    (json.dumps of a dict per reading took 4 µs of a single reading's request)."""
    results = ",".join(
        f'{{"topic":{encode_basestring(s.topic)},"seq":{s.seq},"duplicate":{"true" if s.duplicate else "false"}}}'
        for s in stored
    )
    return f'{{"results":[{results}]}}'.encode()


class ReadingsEndpoint:
    """The ASGI endpoint: the raw request in, one JSON answer out (202, or an error naming the field)."""

    def __init__(
        self, settings: Settings, publisher: Publisher, limiter: DeviceRateLimiter | None, metrics: IngestMetrics
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.limiter = limiter
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send, grant: Grant) -> None:
        """Read, check and store the request's readings, then answer; every failure is answered, none raised."""
        metrics = self.metrics
        try:
            readings = await read_readings(receive, BodyHeaders.of(scope), self.settings)
            metrics.readings_received.count += len(readings)
            try:
                check_topics(readings, grant)
            except Forbidden:
                metrics.readings_forbidden.inc(len(readings))
                raise
            stored = await self.store(readings)
        except ApiError as err:
            metrics.refused(err)
            await err.response()(scope, receive, send)
            return
        except Exception:
            metrics.failed()
            raise
        metrics.answered(202)
        body = accepted_body(stored)
        # The answer Starlette's JSONResponse would send, headers in its order, without its per-answer objects.
        headers = [(b"content-length", b"%d" % len(body)), JSON_CONTENT_TYPE]
        await send({"type": "http.response.start", "status": 202, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def store(self, readings: list[Reading]) -> list[Stored]:
        """Publish all or nothing; a device over its rate, or an unavailable JetStream, costs the device nothing."""
        if self.limiter is None:
            return await self.publisher.publish(readings)
        counts = device_counts(readings)
        try:
            self.limiter.take(counts)
        except RateLimited:
            self.metrics.readings_rate_limited.inc(len(readings))
            raise
        try:
            return await self.publisher.publish(readings)
        except ServiceUnavailable:
            self.limiter.give_back(counts)  # nothing (or not all) was stored: the device's retry must not pay twice
            raise


def check_topics(readings: list[Reading], grant: Grant) -> None:
    """Refuse the whole request (403, nothing stored) when the credential may not publish some of its readings."""
    if grant.publishes_everywhere():
        return
    refused = [index for index, reading in enumerate(readings) if not grant.may_publish(reading.topic)]
    if not refused:
        return
    first = readings[refused[0]].topic
    details: list[dict[str, Any]] = [
        {"index": index, "topic": readings[index].topic} for index in refused[:MAX_NAMED_READINGS]
    ]
    raise Forbidden(
        f"{len(refused)} of {len(readings)} readings are on topics these credentials may not publish to (first at "
        f"index {refused[0]}: {first}); nothing was stored",
        field="topic",
        details=details,
    )


def readings_router(endpoint: ASGIApp, max_batch: int) -> APIRouter:
    """The documented route of the endpoint (its body and answers, for /docs)."""
    router = APIRouter(tags=["readings"])

    @router.post(
        "/v1/readings",
        status_code=202,
        response_model=Accepted,
        summary="Store one reading (an object) or a batch (a JSON array, or NDJSON); gzip accepted",
        openapi_extra={"requestBody": request_body_schema(max_batch)},
        responses=error_responses(
            {
                400: "The body is not UTF-8 JSON (or NDJSON), or not valid gzip",
                401: "Auth is required and no valid token or API key was sent (WWW-Authenticate: Bearer)",
                403: "A reading's topic is outside the credentials' publish patterns; nothing stored",
                413: "The body is larger than max_body_bytes, or max_inflated_bytes once inflated",
                415: "Content-Type is not JSON or NDJSON, or Content-Encoding is not gzip",
                422: "A reading is invalid (each listed in details), or the batch is empty or too long",
                429: "A device sent more than its rate; nothing stored; retry all after Retry-After",
                503: "JetStream unavailable or too slow; retry after Retry-After with the same ids",
            }
        ),
    )
    async def post_readings() -> ServedBy:
        return ServedBy(endpoint)

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
