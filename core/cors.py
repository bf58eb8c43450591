"""Cross-origin requests (CORS) from the pages of the allowed origins, ``TELEMETRY_CORS_ORIGINS``.

A dashboard served from another origin may follow streams with its cookie (``EventSource`` with
``withCredentials``) and a page may post readings, as far as the browser allows: only when the answer
names the page's origin. Every answer to an allowed origin names it, with credentials allowed; a
preflight (``OPTIONS`` with ``Access-Control-Request-Method``) is answered here. Other origins get no
CORS header, so their pages cannot read the answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence

from starlette.types import Message, Scope, Send

ALLOW_METHODS = b"GET, POST, DELETE"
ALLOW_HEADERS = b"Authorization, Content-Type, Content-Encoding, Last-Event-ID, X-API-Key, X-Request-ID"
EXPOSE_HEADERS = b"X-Request-ID, Retry-After"
MAX_AGE_S = 600


class AddedHeaders:
    """A ``send`` that adds headers to the response's start. ``__wrapped__`` is the send it wraps: the stream's
    direct writer (stream/fastwrite.py) looks through it, so a cross-origin stream keeps the fast path.

    It holds the headers until the start only: an open stream holds its ``send`` (bench idle memory).
    """

    __slots__ = ("__wrapped__", "_headers")

    def __init__(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        self.__wrapped__ = send
        self._headers: Sequence[tuple[bytes, bytes]] = headers

    # Not a coroutine function: it hands back the wrapped send's awaitable, a frame fewer per message.
    def __call__(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            headers, self._headers = self._headers, ()
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        return self.__wrapped__(message)


class Cors:
    """The allowed origins, and what their requests get."""

    def __init__(self, origins: Iterable[str]) -> None:
        self._origins = {origin.encode("latin-1") for origin in origins}

    def allowed_origin(self, scope: Scope) -> bytes | None:
        """The request's ``Origin`` when it is allowed, else None."""
        if not self._origins:
            return None
        for name, value in scope["headers"]:
            if name == b"origin":
                return value if value in self._origins else None
        return None

    @staticmethod
    def is_preflight(scope: Scope) -> bool:
        """Whether the request is a browser's preflight, asked before the request it announces."""
        return scope["method"] == "OPTIONS" and any(
            name == b"access-control-request-method" for name, _ in scope["headers"]
        )

    @staticmethod
    def headers(origin: bytes) -> list[tuple[bytes, bytes]]:
        """What every answer to an allowed origin carries."""
        return [
            (b"access-control-allow-origin", origin),
            (b"access-control-allow-credentials", b"true"),
            (b"access-control-expose-headers", EXPOSE_HEADERS),
            (b"vary", b"Origin"),
        ]

    async def answer_preflight(self, origin: bytes, send: Send) -> None:
        """204 naming the methods and request headers the services take, cached by the browser for MAX_AGE_S."""
        headers = [
            *self.headers(origin),
            (b"access-control-allow-methods", ALLOW_METHODS),
            (b"access-control-allow-headers", ALLOW_HEADERS),
            (b"access-control-max-age", str(MAX_AGE_S).encode()),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
