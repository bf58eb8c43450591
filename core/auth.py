"""Who may publish and follow what: the grant of a JWT or a device API key, checked once per request or stream.

A token's claim ``telemetry`` holds ``{"publish": [patterns], "subscribe": [patterns]}`` (topic patterns
as in ``GET /v1/stream``); ``exp`` is required, ``aud`` and ``iss`` are checked when the settings name
them, with ``jwt_leeway_s`` of clock skew. A verified token's grant is cached until it expires (bounded,
least recently used first), so a busy client costs a dict lookup, not a signature check. A grant from a
public key is used only while the keys file it was verified with is unchanged: a rotated or removed
key takes its tokens with it at the next look at the file.

Nothing here logs or echoes a credential: errors say what is wrong with it, never what it is.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jwt
from starlette.requests import cookie_parser
from starlette.types import Scope

from core.apikeys import ApiKeys, is_api_key
from core.errors import ApiError
from core.jwtkeys import HS256, PUBLIC_KEY_ALGORITHMS, PublicKeys, hs256_secret, parse_public_keys, select_key
from core.settings import Settings
from core.topics import REST, InvalidPattern, Pattern, quoted
from core.watched import WatchedFile

MAX_CACHED_TOKENS = 10_000
SECRET_VERSION = -1  # the cache's note for a token verified with the secret, which never changes while we run
CLAIM = "telemetry"
QUERY_TOKEN = "access_token"
EVERY_TOPIC = Pattern((REST,))


class Unauthorized(ApiError):
    """No credentials, or credentials that are not valid (RFC 6750: ``WWW-Authenticate: Bearer``)."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, *, credential_given: bool = True) -> None:
        challenge = 'Bearer error="invalid_token"' if credential_given else "Bearer"
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(ApiError):
    """Valid credentials that do not allow what was asked (a topic outside their patterns)."""

    status = 403
    code = "forbidden"


@dataclass(frozen=True, slots=True)
class Grant:
    """What a credential allows, until ``expires_at`` (epoch seconds, leeway included; inf for an API key)."""

    publish: tuple[Pattern, ...]
    subscribe: tuple[Pattern, ...]
    expires_at: float = math.inf

    def publishes_everywhere(self) -> bool:
        """Whether every topic may be published to (no need to look at each reading)."""
        return EVERY_TOPIC in self.publish

    def may_publish(self, topic: str) -> bool:
        """Whether a reading on ``topic`` (a validated ``site.device.metric``) may be stored."""
        tokens = topic.split(".")
        for pattern in self.publish:  # a loop, not any() over a generator: this runs for every reading
            if pattern.matches(tokens):
                return True
        return False

    def may_subscribe(self, pattern: Pattern) -> bool:
        """Whether every topic ``pattern`` matches may be followed."""
        return any(granted.covers(pattern) for granted in self.subscribe)


EVERYTHING = Grant((EVERY_TOPIC,), (EVERY_TOPIC,))  # auth off


def mint_token(
    secret: bytes,
    *,
    publish: Iterable[Pattern] = (),
    subscribe: Iterable[Pattern] = (),
    ttl_s: float,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """An HS256 token granting the patterns for ``ttl_s`` seconds, with ``aud`` and ``iss`` when given."""
    now = time.time()
    claims: dict[str, Any] = {
        "iat": int(now),
        "exp": int(now + ttl_s),
        CLAIM: {"publish": [str(p) for p in publish], "subscribe": [str(p) for p in subscribe]},
    }
    if audience is not None:
        claims["aud"] = audience
    if issuer is not None:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm=HS256)


def grant_of(claims: dict[str, Any], leeway_s: float) -> Grant:
    """The grant of a verified token's claims; a malformed ``telemetry`` claim makes the token invalid."""
    claim = claims.get(CLAIM, {})
    if not isinstance(claim, dict):
        raise Unauthorized(f"the token's {CLAIM!r} claim must be an object with 'publish' and 'subscribe' lists")
    return Grant(_patterns(claim, "publish"), _patterns(claim, "subscribe"), float(claims["exp"]) + leeway_s)


def _patterns(claim: dict[str, Any], name: str) -> tuple[Pattern, ...]:
    values = claim.get(name, [])
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise Unauthorized(f"the token's {CLAIM}.{name} claim must be a list of topic patterns")
    try:
        return tuple(Pattern.parse(value) for value in values)
    except InvalidPattern as err:
        raise Unauthorized(f"the token's {CLAIM}.{name} claim: {err}") from None


class Authenticator:
    """Credentials to grants: HS256 tokens with the secret, RS256/ES256/EdDSA tokens with the public keys, API
    keys with the keys file; any other algorithm (``none`` included) is refused before a key is looked at."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._secret = hs256_secret(settings)
        self._public: WatchedFile[PublicKeys] | None = None
        if settings.jwt_public_keys_file is not None:
            self._public = WatchedFile(settings.jwt_public_keys_file, parse_public_keys, {})
        self._api_keys = ApiKeys(settings.api_keys_file) if settings.api_keys_file is not None else None
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._leeway_s = settings.jwt_leeway_s
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Grant, int]] = OrderedDict()  # token: its grant, its keys' version
        # API key: its grant, for the keys file as last read (``_key_table``); only keys in it, so bounded by it.
        self._key_grants: dict[str, Grant] = {}
        self._key_table: object = None

    def grant(self, credential: str) -> Grant:
        """The credential's grant; raises Unauthorized saying why there is none."""
        if is_api_key(credential):
            return self._key_grant(credential)
        return self._token_grant(credential)

    def _key_grant(self, key: str) -> Grant:
        """An API key's grant, kept until the keys file changes (no hash and no new grant per request: in the served
        ingest, auth's checks cost a tenth of a single reading's request)."""
        keys = self._api_keys
        table = keys.file.current() if keys is not None else None  # read again if it changed (at most once a second)
        if table is not self._key_table:
            self._key_table, self._key_grants = table, {}
        grant = self._key_grants.get(key)
        if grant is None:
            patterns = keys.publish_patterns(key) if keys is not None else None
            if patterns is None:
                raise Unauthorized("unknown or revoked API key")
            grant = self._key_grants[key] = Grant(patterns, ())
        return grant

    def _token_grant(self, token: str) -> Grant:
        cached = self._cache.get(token)
        if cached is not None:
            grant, version = cached
            if self._clock() < grant.expires_at and version == self._version_now(version):
                self._cache.move_to_end(token)
                return grant
            del self._cache[token]
        grant, version = self._verify(token)
        self._cache[token] = (grant, version)
        if len(self._cache) > MAX_CACHED_TOKENS:
            self._cache.popitem(last=False)
        return grant

    def _version_now(self, version: int) -> int:
        """The version of the keys that verified a cached token, as they are now (the file looked at if due)."""
        if version == SECRET_VERSION or self._public is None:
            return version
        self._public.current()
        return self._public.version

    def _verify(self, token: str) -> tuple[Grant, int]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as err:
            raise Unauthorized(f"not a valid token: {err}") from None
        key, algorithm, version = self._key_for(header.get("alg"), header.get("kid"))
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway_s,
                options={"require": ["exp"]},
            )
        except jwt.PyJWTError as err:
            raise Unauthorized(f"invalid token: {err}") from None
        return grant_of(claims, self._leeway_s), version

    def _key_for(self, algorithm: object, kid: str | None) -> tuple[Any, str, int]:
        """The one key a token of ``algorithm`` may be verified with, that algorithm, and the keys' version."""
        if algorithm == HS256 and self._secret is not None:
            return self._secret, HS256, SECRET_VERSION
        if algorithm in PUBLIC_KEY_ALGORITHMS and self._public is not None:
            found = select_key(self._public.current(), kid)
            if found is None:
                named = f" with kid {quoted(kid)}" if kid is not None else " (the token names no kid)"
                raise Unauthorized(f"no public key{named} verifies this token")
            return found.key, found.algorithm, self._public.version
        raise Unauthorized(f"tokens signed with {quoted(str(algorithm))} are not accepted here")


@dataclass(frozen=True, slots=True)
class CredentialPlaces:
    """Where a credential is read besides ``Authorization: Bearer`` and ``X-API-Key``: a cookie (None: none), and
    the ``access_token`` query parameter (what a browser's ``EventSource`` can send; off by default)."""

    cookie: str | None = None
    query: bool = False


def read_credential(scope: Scope, places: CredentialPlaces) -> str | None:
    """The request's credential, from the first place that has one: the headers, the cookie, the query."""
    authorization: str | None = None
    api_key: str | None = None
    cookies: list[str] = []
    for name, value in scope["headers"]:
        if name == b"authorization":
            authorization = value.decode("latin-1")
        elif name == b"x-api-key":
            api_key = value.decode("latin-1").strip()
        elif name == b"cookie":
            cookies.append(value.decode("latin-1"))
    if authorization is not None:
        scheme, _, credential = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token or API key>'")
        return credential.strip()
    if api_key:
        return api_key
    if places.cookie is not None and cookies:
        cookie = cookie_parser("; ".join(cookies)).get(places.cookie)
        if cookie:
            return cookie
    if places.query:
        query: bytes = scope.get("query_string", b"")
        for parameter, token in parse_qsl(query.decode("latin-1")):
            if parameter == QUERY_TOKEN and token:
                return token
    return None


class Gate:
    """The grant of each request to a hot route (core/frontroutes.py): everything with auth off, else what its
    credential allows; raises Unauthorized when there is none."""

    def __init__(self, settings: Settings, places: CredentialPlaces) -> None:
        self._authenticator = Authenticator(settings) if settings.auth == "required" else None
        self._places = places

    def session_token(self, scope: Scope) -> tuple[str, Grant] | None:
        """A browser session's token: the request's ``Authorization: Bearer`` token (not a cookie, not an API key)
        and its grant; None with auth off. Unauthorized without a valid token."""
        if self._authenticator is None:
            return None
        credential = read_credential(scope, CredentialPlaces())
        if credential is None:
            raise Unauthorized("a session needs a token as 'Authorization: Bearer'", credential_given=False)
        if is_api_key(credential):
            raise Unauthorized("a session needs a token, not an API key: a cookie with no end would hold it")
        return credential, self._authenticator.grant(credential)

    def check(self, scope: Scope) -> Grant:
        """The grant of the request; Unauthorized without valid credentials."""
        if self._authenticator is None:
            return EVERYTHING
        credential = read_credential(scope, self._places)
        if credential is None:
            raise Unauthorized(
                "credentials are required: a token or API key as 'Authorization: Bearer'", credential_given=False
            )
        return self._authenticator.grant(credential)
