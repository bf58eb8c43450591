"""Auth on POST /v1/readings over real HTTP: every kind of bad credential is a 401 and stores nothing, a reading outside
the credentials' patterns is a 403 naming it, API keys work in both headers and stop working once removed from the
file, rotated public keys take effect without a restart, and no credential shows in a log line or an answer."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
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

from core.apikeys import create_key
from core.settings import Settings
from ingest.app import create_app

Serve = Callable[..., AbstractAsyncContextManager[str]]
PLANT1 = ("plant1.>",)
BOILER = {"site": "plant1", "device": "boiler-7", "metric": "temperature", "value": 71.5}
OTHER_SITE = {"site": "plant2", "device": "boiler-7", "metric": "temperature", "value": 70.0}


def auth_settings(make_settings: Callable[..., Settings], tmp_path: Path, **overrides: Any) -> Settings:
    """Auth required with every key source: the secret, a JWKS file and an API keys file (written by the test)."""
    values: dict[str, Any] = {
        "auth": "required",
        "jwt_secret": SECRET,
        "jwt_public_keys_file": tmp_path / "jwks.json",
        "api_keys_file": tmp_path / "api-keys",
        "jwt_audience": AUDIENCE,
    }
    return make_settings(**(values | overrides))


async def stored(js: JetStreamContext, settings: Settings) -> int:
    return (await js.stream_info(settings.stream_name)).state.messages


async def test_bad_credentials_are_401_and_store_nothing_and_good_ones_store(
    make_settings: Callable[..., Settings],
    js: JetStreamContext,
    tmp_path: Path,
    serve: Serve,
    client: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rsa_key = new_key("RS256")
    (tmp_path / "jwks.json").write_text(jwks({"k1": rsa_key}))
    device_key, x_api_key = api_keys_file(tmp_path / "api-keys", PLANT1, PLANT1)
    settings = auth_settings(make_settings, tmp_path)
    refused = {
        "none": {},
        "bad signature": bearer(hs256(claims(publish=PLANT1), secret="another-secret-just-as-long-0123456789")),
        "alg none": bearer(unsigned(claims(publish=PLANT1))),
        "HS256 signed with the public key": bearer(hs256_with_public_key(claims(publish=PLANT1), rsa_key)),
        "expired": bearer(hs256(claims(publish=PLANT1, ttl_s=-HOUR_S))),
        "not yet valid": bearer(hs256(claims(publish=PLANT1, nbf=int(time.time()) + HOUR_S))),
        "wrong audience": bearer(hs256(claims(publish=PLANT1, aud="another-service"))),
        "unknown kid": bearer(signed(claims(publish=PLANT1), new_key("RS256"), kid="k9")),
        "unknown API key": bearer(create_key()),
        "not Bearer": {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
    }
    accepted = {
        "HS256": bearer(hs256(claims(publish=PLANT1))),
        "RS256 by kid": bearer(signed(claims(publish=PLANT1), rsa_key, kid="k1")),
        "API key as Bearer": bearer(device_key),
        "API key as X-API-Key": {"X-API-Key": x_api_key},
    }
    bodies: list[str] = []
    with capture_logs() as logs:
        async with serve(create_app(settings)) as url:
            answers = {}
            for case, headers in refused.items():
                response = await client.post(f"{url}/v1/readings", json=BOILER, headers=headers)
                bodies.append(response.text)
                challenge = response.headers.get("www-authenticate", "")
                answers[case] = (response.status_code, response.json()["error"]["code"], challenge.split()[:1])
            assert answers == dict.fromkeys(refused, (401, "unauthorized", ["Bearer"]))
            assert await stored(js, settings) == 0
            statuses = {}
            for case, headers in accepted.items():
                response = await client.post(f"{url}/v1/readings", json=BOILER, headers=headers)
                bodies.append(response.text)
                statuses[case] = response.status_code
            assert statuses == dict.fromkeys(accepted, 202)
    assert await stored(js, settings) == len(accepted)
    sent = [value.split()[-1] for headers in [*refused.values(), *accepted.values()] for value in headers.values()]
    secrets = [SECRET, *sent]
    seen = "\n".join([*bodies, *map(str, logs), caplog.text])
    assert [secret for secret in secrets if secret in seen] == []


async def test_readings_outside_the_publish_patterns_are_403_naming_them_and_nothing_is_stored(
    make_settings: Callable[..., Settings],
    js: JetStreamContext,
    tmp_path: Path,
    serve: Serve,
    client: httpx.AsyncClient,
) -> None:
    (tmp_path / "jwks.json").write_text(jwks({"k1": new_key("ES256")}))
    (device_key,) = api_keys_file(tmp_path / "api-keys", ("plant1.boiler-7.>",))
    settings = auth_settings(make_settings, tmp_path)
    token = hs256(claims(publish=("plant1.boiler-7.>",), subscribe=(">",)))
    pump = {"site": "plant1", "device": "pump-2", "metric": "flow", "value": 3.0}
    async with serve(create_app(settings)) as url:
        answers = [
            await client.post(f"{url}/v1/readings", json=[BOILER, pump, OTHER_SITE], headers=bearer(token)),
            await client.post(f"{url}/v1/readings", json=OTHER_SITE, headers={"X-API-Key": device_key}),
        ]
        assert await stored(js, settings) == 0
        allowed = await client.post(f"{url}/v1/readings", json=BOILER, headers={"X-API-Key": device_key})
    assert [answer.status_code for answer in answers] == [403, 403]
    errors = [answer.json()["error"] for answer in answers]
    assert [error["code"] for error in errors] == ["forbidden", "forbidden"]
    assert errors[0]["details"] == [
        {"index": 1, "topic": "plant1.pump-2.flow"},
        {"index": 2, "topic": "plant2.boiler-7.temperature"},
    ]
    assert errors[1]["details"] == [{"index": 0, "topic": "plant2.boiler-7.temperature"}]
    assert "nothing was stored" in errors[0]["message"]
    assert allowed.status_code == 202
    assert allowed.json()["results"][0]["seq"] == 1


async def test_an_api_key_removed_from_the_file_is_refused_without_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, serve: Serve, client: httpx.AsyncClient
) -> None:
    keys_file = tmp_path / "keys"
    revoked, kept = api_keys_file(keys_file, PLANT1, PLANT1)
    settings = make_settings(auth="required", api_keys_file=keys_file)

    async with serve(create_app(settings)) as url:

        async def post_with(key: str) -> int:
            return (await client.post(f"{url}/v1/readings", json=BOILER, headers=bearer(key))).status_code

        assert [await post_with(revoked), await post_with(kept)] == [202, 202]
        remove_key(keys_file, revoked)
        await becomes(lambda: post_with(revoked), 401)
        assert await post_with(kept) == 202


async def test_a_rotated_public_key_takes_effect_without_a_restart(
    make_settings: Callable[..., Settings], tmp_path: Path, serve: Serve, client: httpx.AsyncClient
) -> None:
    rotation = Rotation(tmp_path / "jwks.json", claims(publish=PLANT1))
    settings = make_settings(auth="required", jwt_public_keys_file=rotation.path, jwt_audience=AUDIENCE)
    async with serve(create_app(settings)) as url:

        async def status_with(token: str) -> int:
            return (await client.post(f"{url}/v1/readings", json=BOILER, headers=bearer(token))).status_code

        await rotation.check(status_with, 202)


def post_with_urllib(url: str, body: bytes) -> tuple[int, dict[str, Any], str]:
    """POST as urllib does: the whole body first, then read the answer."""
    request = urllib.request.Request(f"{url}/v1/readings", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read()), response.headers.get("WWW-Authenticate", "")
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.loads(err.read()), err.headers.get("WWW-Authenticate", "")


async def test_a_client_that_sends_its_whole_body_before_reading_gets_the_401(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET)
    body = json.dumps([BOILER] * 5000).encode()  # about 400 KB: the answer comes before the body is read
    async with serve(create_app(settings)) as url:
        answers = [await asyncio.to_thread(post_with_urllib, url, body) for _ in range(3)]
    assert [(status, error["error"]["code"], challenge) for status, error, challenge in answers] == [
        (401, "unauthorized", "Bearer")
    ] * 3
