"""Real parts for every test: a nats-server with JetStream on a free loopback port, services on free ports."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
import uvicorn
from fastapi import FastAPI
from support.cluster import NatsCluster
from support.natsproc import StoppableNatsServer
from support.net import free_port, wait_for_readyz

from core.serve import server_config
from core.settings import Settings
from telemetry.natsserver import LocalNatsServer

_stream_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNatsServer]:
    """One real nats-server with JetStream for the session; tests isolate by stream name and subject prefix."""
    server = LocalNatsServer(
        port=free_port(), monitor_port=free_port(), store_dir=tmp_path_factory.mktemp("nats-store")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def make_settings(nats_server: LocalNatsServer) -> AsyncIterator[Callable[..., Settings]]:
    """Settings on the test nats-server with a stream and subject prefix of the test's own.

    The stream is deleted afterwards: each one reserves its max_bytes of the shared server's storage.
    """
    number = next(_stream_numbers)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "nats_urls": [nats_server.url],
            "stream_name": f"TEST{number}",
            "subject_prefix": f"test{number}",
            "log_format": "json",
        }
        values.update(overrides)
        return Settings(**values)

    yield make
    nc = await nats.connect(nats_server.url)
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_stream(f"TEST{number}")
    await nc.close()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[StoppableNatsServer]:
    """A nats-server for one test only, which it may pause, stop and restart (the session's must not be)."""
    server = StoppableNatsServer(port=free_port(), monitor_port=free_port(), store_dir=tmp_path / "nats-store")
    server.start()
    yield server
    server.resume()  # a stopped process does not act on SIGTERM
    server.stop()


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening: a NATS URL that cannot be reached."""
    return free_port()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Default settings for one test."""
    return make_settings()


@asynccontextmanager
async def running(
    app: FastAPI, ready: bool = True, port: int = 0, http: str = "auto", forwarded_allow_ips: str = "127.0.0.1"
) -> AsyncIterator[str]:
    """Serve an app with uvicorn on a socket bound beforehand; yields its URL once /readyz answers 200.

    With ``ready=False`` it yields at once (for tests of a service that cannot become ready); with a
    ``port``, a restarted service is found where its clients left it.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    port = sock.getsockname()[1]
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, 1, forwarded_allow_ips, http=http))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            await wait_for_readyz(url)
        yield url
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest.fixture
def serve() -> Callable[..., AbstractAsyncContextManager[str]]:
    """``async with serve(app) as url``: the app on a real socket, ready, for the block."""
    return running


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster of the test's own, ready for an R3 stream; every node is stopped afterwards."""
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()
