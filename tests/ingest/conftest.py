"""Ingest fixtures: an HTTP client, a JetStream view of what was stored, and a 3-node cluster for fault tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import nats
import nats.js.errors
import pytest
from nats.js import JetStreamContext
from support.cluster import NatsCluster

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


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster of the test's own, ready for an R3 stream; every node is stopped afterwards."""
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()
