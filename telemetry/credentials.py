"""The credentials the telemetry command's own clients (``tail``, ``simulate``) send to services that require auth.

``TELEMETRY_TOKEN`` as given; else, where the services' HS256 secret is at hand (``TELEMETRY_JWT_SECRET`` or
``_FILE``, as ``telemetry run`` passes it to the simulator), a token minted for just the patterns the command
uses and renewed at half its life, so a long ``tail`` reconnects with a valid one after ``token_expired``;
else nothing (auth off).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator, Iterable

import httpx

from core.auth import mint_token
from core.jwtkeys import hs256_secret
from core.settings import Settings
from core.topics import Pattern

TOKEN_ENV = "TELEMETRY_TOKEN"
TOKEN_TTL_S = 3600.0
RENEW_AT = 0.5  # share of a minted token's life after which the next request gets a new one


def has_credentials(settings: Settings) -> bool:
    """Whether the command's clients have a token to send: ``TELEMETRY_TOKEN``, or the HS256 secret to mint one."""
    return bool(os.environ.get(TOKEN_ENV)) or hs256_secret(settings) is not None


class CommandAuth(httpx.Auth):
    """``Authorization: Bearer`` on every request of an httpx client, when there is a token to send."""

    def __init__(
        self,
        token: str | None,
        secret: bytes | None,
        *,
        publish: Iterable[Pattern] = (),
        subscribe: Iterable[Pattern] = (),
        audience: str | None = None,
        issuer: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._given = token
        self._secret = secret
        self._publish = tuple(publish)
        self._subscribe = tuple(subscribe)
        self._audience = audience
        self._issuer = issuer
        self._clock = clock
        self._minted: str | None = None
        self._renew_at = 0.0

    @classmethod
    def from_environment(cls, *, publish: Iterable[Pattern] = (), subscribe: Iterable[Pattern] = ()) -> CommandAuth:
        """From ``TELEMETRY_TOKEN`` and the services' settings; raises what reading them or the secret raises."""
        settings = Settings()
        return cls(
            os.environ.get(TOKEN_ENV) or None,
            hs256_secret(settings),
            publish=publish,
            subscribe=subscribe,
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
        )

    def token(self) -> str | None:
        """The token to send now, or None."""
        if self._given is not None:
            return self._given
        if self._secret is None:
            return None
        now = self._clock()
        if self._minted is None or now >= self._renew_at:
            self._minted = mint_token(
                self._secret,
                publish=self._publish,
                subscribe=self._subscribe,
                ttl_s=TOKEN_TTL_S,
                audience=self._audience,
                issuer=self._issuer,
            )
            self._renew_at = now + TOKEN_TTL_S * RENEW_AT
        return self._minted

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request
