"""The stream service fuzzed from its own OpenAPI document (schemathesis), with auth on and a token that may follow
every topic, so that generated requests get past the gate to the parameters: never a 5xx (a 503 while NATS is up
counts too), and every status, content type and body is the documented one.

An event stream that is served is read until it ends: the service ends each one after ``max_lifetime_s`` (or after
``max_events`` when the fuzzer asks for few and readings arrive), so the fuzzer never waits for a stream that
does not end, and the stream's end (an ``end`` event, then the close) is part of what is checked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import schemathesis
from support.auth import AUDIENCE, SECRET, bearer, claims, hs256
from support.fuzz import fuzz
from support.sse import Serve

from core.settings import Settings
from stream.app import create_app

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())
STREAM_LIFETIME_S = 0.1  # each served stream ends by itself, soon: the fuzzer reads it to its end


async def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    settings: Settings, make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    # Stored readings, so that a generated Last-Event-ID or last_event_id with a wildcard pattern replays some.
    await publish("plant1", "boiler-7", "temperature", [20.0 + step for step in range(10)])
    settings = make_settings(
        auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE, max_lifetime_s=STREAM_LIFETIME_S
    )
    token = hs256(claims(subscribe=(">",)))
    statuses = {}
    async with serve(create_app(settings)) as url:
        for result in SCHEMA.get_all_operations():
            operation = result.ok()
            statuses[operation.label] = await asyncio.to_thread(fuzz, operation, url, bearer(token))
    assert statuses["GET /v1/stream"][200] > 0, statuses  # streams were served, and read to their end
    assert statuses["POST /v1/session"][204] > 0, statuses
