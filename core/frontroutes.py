"""FastAPI with the hot endpoints served in front of its middleware and routing.

Per request, FastAPI's middleware stack, router and dependency solving cost more than the work of
``POST /v1/readings`` or the write of an event itself (profiled: about a third of the ingest's CPU).
The busiest endpoints are plain ASGI apps called directly; their FastAPI routes stay in the OpenAPI
schema (/docs) and serve the same way if reached.

What FastAPI's middleware would give them, they get in one place: request ids (core/requestids.py) and CORS
(core/cors.py) for every route in ``FrontRoutedApp.__call__``, and ``Guarded``: each hot route is added with
``add_front_route``, which puts it behind the service's ``Gate`` (authentication), and its endpoint is handed
the request's grant; it has no way to be called without one.

Neither ``FrontRoutedApp.__call__`` nor ``Guarded.__call__`` is a coroutine function: each does its work at once and
returns the awaitable of what serves the request. A coroutine of theirs would stay suspended, a frame of each, for
as long as the request is served: hours for a stream, multiplied by every open one (bench idle memory).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from core.auth import Gate, Grant
from core.cors import AddedHeaders, Cors
from core.docs import add_docs_routes
from core.errors import ApiError
from core.requestids import HEADER as REQUEST_ID_HEADER
from core.requestids import bind_to_logs, request_id

VALIDATION_ERROR_REF = "#/components/schemas/HTTPValidationError"

GrantedEndpoint = Callable[[Scope, Receive, Send, Grant], Awaitable[None]]


class Guarded:
    """A hot endpoint behind the gate: it runs with the request's grant, or the request is refused (401) before it.

    ``on_refusal`` is told the status of a refusal (the endpoint's own metrics count it).
    """

    __slots__ = ("endpoint", "gate", "on_refusal")

    def __init__(self, endpoint: GrantedEndpoint, gate: Gate, on_refusal: Callable[[int], None]) -> None:
        self.endpoint = endpoint
        self.gate = gate
        self.on_refusal = on_refusal

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The endpoint's awaitable, or the refusal's, once the gate is checked (not a coroutine: see above)."""
        try:
            grant = self.gate.check(scope)
        except ApiError as err:
            self.on_refusal(err.status)
            return err.response()(scope, receive, send)
        return self.endpoint(scope, receive, send, grant)


class FrontRoutedApp(FastAPI):
    """A FastAPI app that hands ``(method, path)`` pairs in ``front_routes`` straight to their endpoint.

    A path with a trailing slash is a 404 like any unknown path, not a redirect: Starlette's redirect
    builds its ``Location`` from the request's ``Host`` header, so anyone could make the service send
    clients elsewhere, and a redirected POST loses its body with many clients.
    """

    def __init__(self, cors: Cors | None = None, docs: bool = True, **kwargs: Any) -> None:
        # FastAPI's pages load their scripts from CDNs: core/docs.py serves /docs instead, and there is no /redoc.
        kwargs.update(docs_url=None, redoc_url=None)
        if not docs:  # the documentation routes are not there at all: a 404 like any unknown path
            kwargs.update(openapi_url=None)
        super().__init__(redirect_slashes=False, **kwargs)
        if self.openapi_url:
            add_docs_routes(self, self.openapi_url)
        self.front_routes: dict[tuple[str, str], ASGIApp] = {}
        self.cors = cors or Cors(())

    def add_front_route(
        self,
        method: str,
        path: str,
        endpoint: GrantedEndpoint,
        gate: Gate,
        on_refusal: Callable[[int], None] = lambda status: None,
    ) -> Guarded:
        """Serve ``endpoint`` in front, behind ``gate``; returns what the documented route hands requests to."""
        guarded = Guarded(endpoint, gate, on_refusal)
        self.front_routes[(method, path)] = guarded
        return guarded

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document without the 422 it adds to every route with parameters: a parameter that fails
        validation is answered 400 in the one error shape (core/errors.py), which each route documents."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        document = super().openapi()
        for operation in (op for path in document.get("paths", {}).values() for op in path.values()):
            if VALIDATION_ERROR_REF in str(operation.get("responses", {}).get("422")):
                del operation["responses"]["422"]
        for name in ("HTTPValidationError", "ValidationError"):
            document.get("components", {}).get("schemas", {}).pop(name, None)
        return document

    # Awaitable, not Starlette's coroutine: uvicorn (told the app is ASGI 3 in core/serve.py) only awaits it.
    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:  # type: ignore[override]
        """The awaitable of what serves the request, with its request id and CORS headers decided at once."""
        if scope["type"] == "http":  # every route, the hot ones too: request ids and CORS here, before them all
            identifier = request_id(scope)
            bind_to_logs(identifier)
            headers = [(REQUEST_ID_HEADER, identifier)]
            origin = self.cors.allowed_origin(scope)
            if origin is not None:
                if self.cors.is_preflight(scope):
                    return self.cors.answer_preflight(origin, AddedHeaders(send, headers))
                headers += self.cors.headers(origin)
            send = AddedHeaders(send, headers)  # one wrapper: the stream's direct writer looks through one
            endpoint = self.front_routes.get((scope["method"], scope["path"]))
            if endpoint is not None:
                return endpoint(scope, receive, send)
        return super().__call__(scope, receive, send)


class ServedBy(Response):
    """What a documented route returns: it hands the request to the endpoint, as if served in front."""

    def __init__(self, endpoint: ASGIApp) -> None:
        self.endpoint = endpoint
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoint(scope, receive, send)
