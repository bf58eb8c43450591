"""``/v1/session`` over real HTTP: a page's token becomes the stream's HttpOnly cookie, which then opens streams;
DELETE clears it; no token, a bad one or an API key get a 401; with auth off nothing is set."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse
from support.auth import AUDIENCE, HOUR_S, SECRET, api_keys_file, bearer, claims, hs256
from support.sse import Serve, take

from core.settings import Settings
from stream.app import create_app

COOKIE = "telemetry_token"


def set_cookie(response: httpx.Response) -> dict[str, str]:
    """The Set-Cookie header's attributes, by lower-cased name (the cookie itself under its own name)."""
    attributes: dict[str, str] = {}
    for part in response.headers["set-cookie"].split(";"):
        name, _, value = part.strip().partition("=")
        attributes[name if name == COOKIE else name.lower()] = value
    return attributes


async def test_a_posted_token_becomes_the_cookie_that_opens_a_stream_and_delete_clears_it(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE)
    token = hs256(claims(subscribe=("s.>",), ttl_s=HOUR_S))
    async with serve(create_app(settings)) as url, httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as page:
        opened = await page.post(f"{url}/v1/session", headers=bearer(token))
        assert opened.status_code == 204
        cookie = set_cookie(opened)
        assert cookie[COOKIE] == token
        assert {"httponly", "path", "samesite", "max-age"} <= set(cookie) and "secure" not in cookie
        assert (cookie["path"], cookie["samesite"].lower()) == ("/", "strict")
        assert HOUR_S - 60 <= int(cookie["max-age"]) <= HOUR_S  # expires with the token
        # What an EventSource created withCredentials sends: the cookie, no header.
        async with aconnect_sse(page, "GET", f"{url}/v1/stream", params={"topic": "s.>"}) as source:
            assert source.response.status_code == 200
            stored = await publish("s", "d", "m", [1.0])
            assert [int(event.id) for event in await take(source.aiter_sse(), 1)] == stored
        closed = await page.delete(f"{url}/v1/session")
        assert closed.status_code == 204 and set_cookie(closed)["max-age"] == "0"
        assert COOKIE not in page.cookies
        refused = await page.get(f"{url}/v1/stream", params={"topic": "s.>"})
    assert refused.status_code == 401


async def test_a_session_over_tls_gets_a_secure_cookie(make_settings: Callable[..., Settings], serve: Serve) -> None:
    # Behind a TLS-terminating proxy the service sees X-Forwarded-Proto from a trusted peer (127.0.0.1 here).
    settings = make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE)
    token = hs256(claims(subscribe=("s.>",), ttl_s=HOUR_S))
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        opened = await client.post(f"{url}/v1/session", headers={**bearer(token), "X-Forwarded-Proto": "https"})
    assert opened.status_code == 204 and "secure" in set_cookie(opened)


async def test_no_token_a_bad_one_or_an_api_key_get_no_session(
    make_settings: Callable[..., Settings], serve: Serve, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys"
    (key,) = api_keys_file(keys, ("s.>",))
    settings = make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE, api_keys_file=keys)
    expired = hs256(claims(subscribe=("s.>",), ttl_s=-HOUR_S))
    as_cookie = {"Cookie": f"{COOKIE}={hs256(claims(subscribe=('s.>',)))}"}  # a session is opened by its header
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        answers = [
            await client.post(f"{url}/v1/session", headers=headers)
            for headers in (
                {},
                bearer(expired),
                bearer(key),
                as_cookie,
            )
        ]
    assert [answer.status_code for answer in answers] == [401, 401, 401, 401]
    assert all("set-cookie" not in answer.headers for answer in answers)
    assert all(answer.json()["error"]["code"] == "unauthorized" for answer in answers)


async def test_with_auth_off_a_session_sets_nothing(settings: Settings, serve: Serve) -> None:
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        opened = await client.post(f"{url}/v1/session", headers=bearer("anything"))
    assert opened.status_code == 204 and "set-cookie" not in opened.headers
