"""The ingest service fuzzed from its own OpenAPI document (schemathesis): whatever a client sends, the answer is
never a 5xx (a 503 while NATS is up counts too), and its status, content type and body are the documented ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import schemathesis
from support.fuzz import fuzz
from support.sse import Serve

from core.settings import Settings
from ingest.app import create_app

SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


async def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    # A rate limit of its own per device would answer 429s (documented) to most of the fuzzer's devices; lifted,
    # every request reaches validation and publishing.
    settings = make_settings(ingest_rate_per_device_per_s=0)
    statuses = {}
    async with serve(create_app(settings)) as url:
        for result in SCHEMA.get_all_operations():
            operation = result.ok()
            statuses[operation.label] = await asyncio.to_thread(fuzz, operation, url)
    assert statuses["POST /v1/readings"][202] > 0, statuses  # readings were stored, not only refused
