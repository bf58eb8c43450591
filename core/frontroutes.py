"""FastAPI with the hot endpoints served in front of its middleware and routing.

Per request, FastAPI's middleware stack, router and dependency solving cost more than the work of
``POST /v1/readings`` or the write of an event itself (profiled: about a third of the ingest's CPU).
The busiest endpoints are plain ASGI apps called directly; their FastAPI routes stay in the OpenAPI
schema (/docs) and serve the same way if reached.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send


class FrontRoutedApp(FastAPI):
    """A FastAPI app that hands ``(method, path)`` pairs in ``front_routes`` straight to their endpoint.

    A path with a trailing slash is a 404 like any unknown path, not a redirect: Starlette's redirect
    builds its ``Location`` from the request's ``Host`` header, so anyone could make the service send
    clients elsewhere, and a redirected POST loses its body with many clients.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(redirect_slashes=False, **kwargs)
        self.front_routes: dict[tuple[str, str], ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            endpoint = self.front_routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class ServedBy(Response):
    """What a documented route returns: it hands the request to the endpoint, as if served in front."""

    def __init__(self, endpoint: ASGIApp) -> None:
        self.endpoint = endpoint
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)
