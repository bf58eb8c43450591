"""Fuzzing a service from its own OpenAPI document (schemathesis): every answer is checked against the document."""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES_PER_OPERATION = 60  # bounded, so that make test stays fast; make the number larger to fuzz at length
CHECKS = [
    negative_data_rejection,
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
REQUEST_TIMEOUT_S = 30.0  # a bound for a broken server, never reached by a working one


def fuzz(operation: schemathesis.APIOperation, url: str, headers: dict[str, str] | None = None) -> Counter[int]:
    """Send EXAMPLES_PER_OPERATION generated requests to ``operation`` (with ``headers``); each answer is checked:
    never a 5xx (a 503 while NATS is up included), and its status, content type and body are the documented ones.

    Returns how many answers had each status, so that a test can see the fuzzer got past the errors too.
    """
    statuses: Counter[int] = Counter()

    @examples(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(operation.as_strategy(mode) for mode in GenerationMode))
    def check(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=url, headers=headers, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)
        statuses[response.status_code] += 1

    check()
    return statuses
