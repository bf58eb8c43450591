"""``/healthz``, ``/readyz`` and ``/metrics``: the same three endpoints on both services."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, Field


class Readiness(BaseModel):
    """The answer of ``/readyz``: 200 ready, or 503 with the reason."""

    status: Literal["ready", "not ready"]
    reason: str | None = Field(default=None, description="Why the service cannot serve yet (503 only).")


def health_router(not_ready_reason: Callable[[], str | None], registry: CollectorRegistry) -> APIRouter:
    """Probes and metrics; ``not_ready_reason`` returns why the service cannot serve yet, or None."""
    router = APIRouter(tags=["operations"])

    @router.get("/healthz", summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Connected to NATS and the stream exists (503 otherwise)",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready yet; the reason says why."}},
    )
    async def readyz() -> JSONResponse:
        reason = not_ready_reason()
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "The text exposition format."}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return router
