"""The service's JSON log lines name the request being served."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from core.logs import configure_logging
from core.requestids import bind_to_logs


@pytest.fixture
def json_logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """What the service's logging, as configured at start-up, writes to stderr."""
    written = io.StringIO()
    monkeypatch.setattr(sys, "stderr", written)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("info", "json")
    try:
        yield written
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()


async def test_a_line_written_while_a_request_is_served_names_it_and_no_other_line_does(
    json_logs: io.StringIO,
) -> None:
    log = structlog.get_logger("test")

    async def serve(identifier: bytes) -> None:  # uvicorn serves each request in a task of its own
        bind_to_logs(identifier)
        log.info("served")

    await asyncio.gather(asyncio.create_task(serve(b"req-1")), asyncio.create_task(serve(b"req-2")))
    log.info("between requests")
    lines = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    assert [(line["event"], line.get("request_id")) for line in lines] == [
        ("served", "req-1"),
        ("served", "req-2"),
        ("between requests", None),
    ]
