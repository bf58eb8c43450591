"""Real parts for every test: a nats-server with JetStream on a free loopback port, services on free ports."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from support.cluster import NatsCluster
from support.natsproc import StoppableNatsServer
from support.net import free_port
from support.server import SERVER_LOOPS, ServerLoop, running

from core.settings import Settings
from telemetry.natsserver import LocalNatsServer

_stream_numbers = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fault-rounds",
        type=int,
        default=1,
        help="how many times each cluster fault test kills and restarts a node (make faults: more)",
    )


@pytest.fixture
def fault_rounds(request: pytest.FixtureRequest) -> int:
    """Kills per cluster fault test: one in ``make test``, more in ``make faults``."""
    rounds: int = request.config.getoption("--fault-rounds")
    return rounds


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


@pytest.fixture(params=SERVER_LOOPS)
def server_loop(request: pytest.FixtureRequest) -> ServerLoop:
    """The event loop the services under test run on: uvloop, as in production, and asyncio's own."""
    loop: ServerLoop = request.param
    return loop


@pytest.fixture
def serve(server_loop: ServerLoop) -> Callable[..., AbstractAsyncContextManager[str]]:
    """``async with serve(app) as url``: the app on a real socket, on a loop and thread of its own, ready."""
    return functools.partial(running, loop=server_loop)


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster of the test's own, ready for an R3 stream; every node is stopped afterwards."""
    cluster = NatsCluster(tmp_path / "cluster")
    cluster.start()
    yield cluster
    cluster.stop()
