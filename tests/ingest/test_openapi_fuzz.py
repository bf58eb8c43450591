"""The ingest service fuzzed from its own OpenAPI document (schemathesis): whatever a client sends, the answer is
never a 5xx (a 503 while NATS is up counts too), and its status, content type and body are the documented ones."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from support.sse import Serve

from core.settings import Settings
from ingest.app import create_app

EXAMPLES_PER_OPERATION = 60  # bounded, so that make test stays fast; make the number larger to fuzz at length
SCHEMA = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


async def test_no_request_gets_a_server_error_or_an_undocumented_answer(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    # A rate limit of its own per device would answer 429s (documented) to most of the fuzzer's devices; lifted,
    # every request reaches validation and publishing.
    settings = make_settings(ingest_rate_per_device_per_s=0)
    async with serve(create_app(settings)) as url:
        for result in SCHEMA.get_all_operations():
            await asyncio.to_thread(fuzz, result.ok(), url)


def fuzz(operation: schemathesis.APIOperation, url: str) -> None:
    """Send EXAMPLES_PER_OPERATION generated requests to ``operation``; each answer is checked."""

    @examples(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=url,
            checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
            timeout=30,
        )

    check()
