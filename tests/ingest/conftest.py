"""Ingest fixtures: an HTTP client and a JetStream view of what was stored."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext

from core.settings import Settings


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client with a bound on every request: a hanging answer is a failure, not a stuck test."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        yield http


@pytest.fixture
async def js(settings: Settings) -> AsyncIterator[JetStreamContext]:
    """JetStream on the test's server, to read back what the service stored."""
    nc = await nats.connect(settings.nats_urls)
    yield nc.jetstream()
    await nc.drain()
