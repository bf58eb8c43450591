"""Auth on GET /v1/stream over real HTTP: bad credentials are a 401 and uncovered patterns a 403 before any stream
starts (and before the connection caps), tokens are read from the header, the cookie and (only when allowed) the
query, rotated keys and revoked API keys take effect without a restart, and a stream whose token expires ends with
``token_expired`` and resumes with a fresh token without losing a reading."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent
from structlog.testing import capture_logs
from support.auth import (
    AUDIENCE,
    HOUR_S,
    SECRET,
    Rotation,
    api_keys_file,
    bearer,
    becomes,
    claims,
    hs256,
    hs256_with_public_key,
    jwks,
    new_key,
    remove_key,
    signed,
    unsigned,
)
from support.metrics import metric_becomes
from support.sse import EVENT_TIMEOUT_S, Serve, events, seqs, take

from core.apikeys import create_key
from core.requestids import add_request_id
from core.settings import Settings
from stream.app import create_app

PLANT1 = ("plant1.>",)
COOKIE = "telemetry_token"
STREAM_LINES = ("stream_opened", "stream_closed")  # what a served stream is logged with: it must name no credential


async def answer(
    url: str,
    *topics: str,
    headers: dict[str, str] | None = None,
    cookies: dict[str, str] | None = None,
    whole: bool = False,
    **params: Any,
) -> tuple[int, str]:
    """The status of ``GET /v1/stream`` and its body: whole for an answer that ends (an error, a refused stream),
    the first bytes of a stream that started (then left)."""
    query = [("topic", topic) for topic in topics] + [(name, str(value)) for name, value in params.items()]
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(EVENT_TIMEOUT_S), cookies=cookies) as client,
        client.stream("GET", f"{url}/v1/stream", params=query, headers=headers) as response,
    ):
        if response.status_code != 200 or whole:
            return response.status_code, (await response.aread()).decode()
        async for text in response.aiter_text():
            if text:
                return response.status_code, text
        return response.status_code, ""


def error_of(body: str) -> str:
    code: str = json.loads(body)["error"]["code"]
    return code


async def test_each_credential_is_refused_or_streams_as_it_should(
    make_settings: Callable[..., Settings], tmp_path: Path, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    rsa_key, ed_key = new_key("RS256"), new_key("EdDSA")
    (tmp_path / "jwks.json").write_text(jwks({"k1": rsa_key, "k2": ed_key}))
    (device_key,) = api_keys_file(tmp_path / "keys", PLANT1)
    settings = make_settings(
        auth="required",
        jwt_secret=SECRET,
        jwt_public_keys_file=tmp_path / "jwks.json",
        api_keys_file=tmp_path / "keys",
        jwt_audience=AUDIENCE,
    )
    follower = hs256(claims(subscribe=PLANT1))
    cases: dict[str, tuple[dict[str, Any], int | str]] = {
        "no token": ({}, "unauthorized"),
        "bad signature": (
            {"headers": bearer(hs256(claims(subscribe=PLANT1), secret="another-secret-just-as-long-0123456789"))},
            "unauthorized",
        ),
        "alg none": ({"headers": bearer(unsigned(claims(subscribe=PLANT1)))}, "unauthorized"),
        "HS256 signed with the public key": (
            {"headers": bearer(hs256_with_public_key(claims(subscribe=PLANT1), rsa_key))},
            "unauthorized",
        ),
        "expired": ({"headers": bearer(hs256(claims(subscribe=PLANT1, ttl_s=-HOUR_S)))}, "unauthorized"),
        "not yet valid": (
            {"headers": bearer(hs256(claims(subscribe=PLANT1, nbf=int(time.time()) + HOUR_S)))},
            "unauthorized",
        ),
        "wrong audience": ({"headers": bearer(hs256(claims(subscribe=PLANT1, aud="elsewhere")))}, "unauthorized"),
        "query token while off": ({"access_token": follower}, "unauthorized"),
        "unknown API key": ({"headers": {"X-API-Key": create_key()}}, "unauthorized"),
        "pattern not covered": ({"headers": bearer(hs256(claims(subscribe=("plant1.boiler-7.>",))))}, "forbidden"),
        "API key (publish only)": ({"headers": bearer(device_key)}, "forbidden"),
        "HS256 in the header": ({"headers": bearer(follower)}, 200),
        "RS256 by kid": ({"headers": bearer(signed(claims(subscribe=(">",)), rsa_key, kid="k1"))}, 200),
        "EdDSA by kid": (
            {"headers": bearer(signed(claims(subscribe=("*.*.temperature", "plant1.>")), ed_key, "k2"))},
            200,
        ),
        "cookie": ({"cookies": {COOKIE: follower}}, 200),
    }
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(create_app(settings)) as url:
            answers = {case: await answer(url, "plant1.>", **request) for case, (request, _) in cases.items()}
    outcomes = {
        case: status if status == 200 and body.startswith("retry:") else error_of(body)
        for case, (status, body) in answers.items()
    }
    assert outcomes == {case: expected for case, (_, expected) in cases.items()}
    assert {answers[case][0] for case, (_, expected) in cases.items() if expected == "forbidden"} == {403}
    sent = [SECRET, device_key, follower]
    sent += [value.split()[-1] for request, _ in cases.values() for value in request.get("headers", {}).values()]
    seen = "\n".join([*(body for _, body in answers.values()), *map(str, logs), caplog.text])
    assert [secret for secret in sent if secret in seen] == []
    streamed = [case for case, (_, expected) in cases.items() if expected == 200]
    logged = sorted(line["event"] for line in logs if line["event"] in STREAM_LINES)  # a close may follow the next open
    assert logged == sorted(STREAM_LINES * len(streamed))


async def test_a_query_token_is_read_only_when_allowed_and_never_logged(
    make_settings: Callable[..., Settings], serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE, auth_query_token=True)
    token = hs256(claims(subscribe=PLANT1))
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(create_app(settings)) as url:
            status, body = await answer(url, "plant1.*.temperature", access_token=token)
            refused, _ = await answer(url, "plant2.>", access_token=token)
    assert (status, body.split("\n")[0][:6], refused) == (200, "retry:", 403)
    assert [line["event"] for line in logs if line["event"] in STREAM_LINES] == [*STREAM_LINES]
    seen = "\n".join([*map(str, logs), caplog.text])
    assert token not in seen and "access_token" not in seen  # the query string is never logged


async def test_refusals_for_credentials_come_before_the_connection_caps(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE, max_connections=1)
    async with (
        serve(create_app(settings)) as url,
        events(url, "plant1.>", headers=bearer(hs256(claims(subscribe=PLANT1)))),
    ):
        # The one slot is taken: a client without credentials, or without the right to follow, is told why, not
        # that the service is full (a 200 with "too_many_connections" would bring its EventSource back for ever).
        without = await answer(url, "plant1.>")
        uncovered = await answer(url, "plant2.>", headers=bearer(hs256(claims(subscribe=PLANT1))))
        full = await answer(url, "plant1.>", headers=bearer(hs256(claims(subscribe=PLANT1))), whole=True)
    assert (without[0], uncovered[0]) == (401, 403)
    assert full[0] == 200 and '"too_many_connections"' in full[1]


async def test_a_rotated_public_key_takes_effect_without_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, serve: Serve
) -> None:
    rotation = Rotation(tmp_path / "jwks.json", claims(subscribe=PLANT1))
    settings = make_settings(auth="required", jwt_public_keys_file=rotation.path, jwt_audience=AUDIENCE)
    async with serve(create_app(settings)) as url:

        async def status_with(token: str) -> int:
            return (await answer(url, "plant1.>", headers=bearer(token)))[0]

        await rotation.check(status_with, 200)


async def test_an_api_key_removed_from_the_file_is_refused_without_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, serve: Serve
) -> None:
    (key,) = api_keys_file(tmp_path / "keys", PLANT1)
    settings = make_settings(auth="required", api_keys_file=tmp_path / "keys")
    async with serve(create_app(settings)) as url:

        async def status() -> int:
            return (await answer(url, "plant1.>", headers={"X-API-Key": key}))[0]

        assert await status() == 403  # a device key: known, but it may not follow anything
        remove_key(tmp_path / "keys", key)
        await becomes(status, 401)


@contextlib.asynccontextmanager
async def short_lived_stream(url: str, topic: str) -> AsyncIterator[AsyncIterator[ServerSentEvent]]:
    """A stream from the start of history on a token that expires within seconds.

    A machine too busy to connect before the token expired gets a 401: then again with a token that lives longer.
    """
    async with contextlib.AsyncExitStack() as stack:
        for ttl_s in (2, 4, 8, 16):
            headers = bearer(hs256(claims(subscribe=(topic,), ttl_s=ttl_s)))
            try:
                stream = await stack.enter_async_context(events(url, topic, headers=headers, last_event_id=0))
                break
            except httpx.HTTPStatusError as err:
                if err.response.status_code != 401:
                    raise
        else:
            raise AssertionError("no short-lived token lasted until its stream started")
        yield stream


async def test_an_expired_token_ends_the_stream_and_a_fresh_one_resumes_it_losing_nothing(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_leeway_s=0)
    async with serve(create_app(settings)) as url:
        stored = await publish("s", "d", "m", [1.0, 2.0])
        received: list[int] = []
        async with short_lived_stream(url, "s.>") as stream:
            stored += await publish("s", "d", "m", [3.0, 4.0])
            async with asyncio.timeout(EVENT_TIMEOUT_S + 16):
                async for event in stream:
                    if event.event == "reading":
                        received.append(int(event.id))
                    elif event.event == "end":
                        assert json.loads(event.data) == {"reason": "token_expired"}
                        break
        stored += await publish("s", "d", "m", [5.0, 6.0])
        resume_from = received[-1] if received else 0
        fresh = bearer(hs256(claims(subscribe=("s.>",))))
        async with events(url, "s.>", headers={**fresh, "Last-Event-ID": str(resume_from)}) as stream:
            received += seqs(await take(stream, len([seq for seq in stored if seq > resume_from])))
        await metric_becomes(url, 'telemetry_stream_ended_connections_total{reason="token_expired"}', 1)
    assert received == stored
