"""Runs one service under uvicorn, configured the same way from the CLI and from the tests."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from core.httpprotocol import HttpLimits, protocol_class
from core.settings import Settings

# CPython collects its youngest generation once 700 objects more were made than freed. The requests in flight (32
# in bench.ingest, each waiting for JetStream) hold more than that: every few requests a collection traversed them
# all and promoted them, and full collections of the whole heap followed, 6 % of the ingest's CPU (gc.callbacks).
# With 10,000, a collection comes every hundred-odd requests and finds most of their objects gone; garbage in
# cycles waits as long: at most 10,000 objects, a few MB.
YOUNG_COLLECTION_THRESHOLD = 10_000


def collect_garbage_less_often() -> None:
    """Raise the youngest generation's threshold (above); the older generations' stay CPython's."""
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def server_config(
    app: FastAPI,
    host: str,
    port: int,
    graceful_s: int,
    forwarded_allow_ips: str,
    http_limits: HttpLimits,
    http: str = "auto",
    loop: str = "auto",
) -> uvicorn.Config:
    """uvicorn settings: our own JSON logs (no access log), uvloop, httptools with the limits of
    core/httpprotocol.py, bounded graceful shutdown, ``X-Forwarded-*`` from ``forwarded_allow_ips``.

    ``http="h11"`` and ``loop="asyncio"`` are for the tests: the service runs the same on the paths that do not
    depend on httptools or uvloop. h11 has a head size limit of its own (answered 400, by uvicorn) and no head
    timeout.
    """
    protocol: type[asyncio.Protocol] | str = protocol_class(http_limits) if http in ("auto", "httptools") else http
    return uvicorn.Config(
        ForwardedHeaders(app, forwarded_allow_ips),
        interface="asgi3",  # not guessed: FrontRoutedApp.__call__ returns an awaitable, it is no coroutine function
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        loop=loop,
        http=protocol,
        h11_max_incomplete_event_size=http_limits.max_head_bytes,
        lifespan="on",
        timeout_graceful_shutdown=graceful_s,
        server_header=False,
        proxy_headers=False,  # ForwardedHeaders instead
    )


FORWARDED_HEADERS = frozenset({b"x-forwarded-for", b"x-forwarded-proto"})  # all uvicorn's middleware reads


async def _nothing(scope: Scope, receive: Receive, send: Send) -> None:
    """What ``ForwardedHeaders`` hands requests to behind uvicorn's middleware: its rewrite of the scope is all."""


class ForwardedHeaders:
    """uvicorn's ``proxy_headers``: the client and scheme from ``X-Forwarded-For`` and ``X-Forwarded-Proto`` when the
    peer is one of ``forwarded_allow_ips``, by uvicorn's own middleware, then the app's awaitable.

    uvicorn's middleware awaits the app in a coroutine that stays suspended for as long as the request is served, a
    frame for every open stream (bench idle memory). Here it rewrites the scope to completion first: behind it is an
    app that does nothing, so it never waits.
    """

    def __init__(self, app: ASGIApp, forwarded_allow_ips: str) -> None:
        self.app = app
        # uvicorn types the ASGI interface with TypedDicts, Starlette with mappings: the same scopes and callables.
        rewrite = ProxyHeadersMiddleware(_nothing, trusted_hosts=forwarded_allow_ips)  # type: ignore[arg-type]
        self._rewrite: Callable[[Scope, Receive, Send], Coroutine[Any, Any, None]] = rewrite  # type: ignore[assignment]

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """The app's awaitable, for the scope as rewritten (only a request with such headers can be: the middleware's
        look at the peer's address, an ``ipaddress`` parse, cost 1 µs of every request)."""
        for name, _ in scope.get("headers", ()):
            if name in FORWARDED_HEADERS:
                self._rewrite_scope(scope, receive, send)
                break
        return self.app(scope, receive, send)

    def _rewrite_scope(self, scope: Scope, receive: Receive, send: Send) -> None:
        rewrite = self._rewrite(scope, receive, send)
        try:
            rewrite.send(None)
        except StopIteration:
            return
        raise RuntimeError("uvicorn's ProxyHeadersMiddleware waited: the scope was not rewritten before the app")


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app at the first signal, before uvicorn waits for open requests.

    uvicorn runs the app's lifespan shutdown only after every connection closed, so a service with
    long-lived streams (SSE) must start ending them from the signal itself.
    """

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._on_signal is not None and not self.should_exit:
            self._on_signal()
        super().handle_exit(sig, frame)


def serve(app: FastAPI, settings: Settings, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM; blocks. ``app.state.on_shutdown_signal``, if set, runs at the first signal."""
    on_signal = getattr(app.state, "on_shutdown_signal", None)
    config = server_config(
        app, host, port, settings.shutdown_grace_s, settings.forwarded_allow_ips, HttpLimits.of(settings)
    )
    collect_garbage_less_often()
    DrainingServer(config, on_signal).run()
