"""``/v1/session``: a browser page hands its token over once and gets it back as an HttpOnly cookie.

``EventSource`` cannot send an ``Authorization`` header, and gives up for good on any answer but 200: a
page posts its token here (``POST``, ``Authorization: Bearer``), the stream then reads it from the cookie
(``TELEMETRY_AUTH_COOKIE_NAME``), and the page renews it the same way before it expires (a stream ends
with ``token_expired`` when it does). ``DELETE`` clears it. The cookie is HttpOnly (scripts cannot read
it), SameSite=Strict, Secure when the request came over TLS, and expires with the token.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from core.auth import Gate
from core.errors import error_responses
from core.settings import Settings


def session_router(gate: Gate, settings: Settings) -> APIRouter:
    """The session routes of the stream service."""
    router = APIRouter(tags=["auth"])
    cookie = settings.auth_cookie_name

    @router.post(
        "/v1/session",
        status_code=204,
        summary="Keep a token as the stream's cookie",
        responses=error_responses({401: "No token, or one that is not valid (WWW-Authenticate: Bearer)."}),
    )
    async def open_session(request: Request) -> Response:
        session = gate.session_token(request.scope)
        response = Response(status_code=204)
        if session is not None:  # auth off: nothing to keep
            token, grant = session
            max_age = max(0, int(grant.expires_at - settings.jwt_leeway_s - time.time()))
            response.set_cookie(
                cookie,
                token,
                max_age=max_age,
                path="/",
                secure=request.url.scheme == "https",
                httponly=True,
                samesite="strict",
            )
        return response

    @router.delete("/v1/session", status_code=204, summary="Forget the stream's cookie")
    async def close_session(request: Request) -> Response:
        response = Response(status_code=204)
        response.delete_cookie(cookie, path="/", secure=request.url.scheme == "https", httponly=True, samesite="strict")
        return response

    return router
