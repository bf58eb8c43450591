"""A 3-node JetStream cluster on loopback for fault tests: nodes a test may kill (SIGKILL), pause and restart.

Each node is a LocalNatsServer started from a config file of its own (server_name, listen, http,
jetstream { store_dir }, cluster { name, listen, routes }); a restarted node keeps its ports and store,
as a real server coming back after a crash does. The cluster is ready when every running node's
JetStream is enabled and every one of them sees the same meta leader with the whole cluster behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from support.natsproc import StoppableNatsServer
from support.net import free_port

from core.jetstream import close_failed_attempt
from telemetry.natsserver import NatsServerError, nats_server_binary

CLUSTER_NAME = "telemetry-test"
READY_TIMEOUT_S = 30.0
POLL_S = 0.05
PHASE_TIMEOUT_S = 30.0  # the longest one phase of a fault test may take


class ClusterNode(StoppableNatsServer):
    """One node of the cluster: its own config file, store, client, monitoring and route ports."""

    def __init__(self, *, name: str, directory: Path, cluster_port: int) -> None:
        super().__init__(port=free_port(), monitor_port=free_port(), store_dir=directory / "store")
        self.name = name
        self.cluster_port = cluster_port
        self.config_file = directory / "nats.conf"

    def write_config(self, peers: list[ClusterNode]) -> None:
        """The node's configuration; routes name every other node of the cluster."""
        routes = ", ".join(f'"nats-route://{self.host}:{peer.cluster_port}"' for peer in peers if peer is not self)
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(
            f'server_name: "{self.name}"\n'
            f'listen: "{self.host}:{self.port}"\n'
            f'http: "{self.host}:{self.monitor_port}"\n'
            f'jetstream {{ store_dir: "{self.store_dir}" }}\n'
            f'cluster {{ name: "{CLUSTER_NAME}", listen: "{self.host}:{self.cluster_port}", routes: [{routes}] }}\n'
        )

    def command(self) -> list[str]:
        return [str(nats_server_binary()), "--config", str(self.config_file)]

    @property
    def running(self) -> bool:
        """Whether the process is alive (a paused one counts as running)."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no goodbye to the peers or the clients, as in a crash (also works on a paused node)."""
        if self.running:
            assert self.process is not None
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def monitor(self, path: str) -> Any:
        """A monitoring endpoint's JSON (``/jsz``, ``/connz``)."""
        response = httpx.get(f"http://{self.host}:{self.monitor_port}{path}", timeout=1.0)
        response.raise_for_status()
        return response.json()


class NatsCluster:
    """Three (or ``size``) nodes; every process started is stopped by ``stop``, whatever state it is in."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        self.nodes = [
            ClusterNode(name=f"n{number}", directory=directory / f"n{number}", cluster_port=free_port())
            for number in range(1, size + 1)
        ]
        for node in self.nodes:
            node.write_config(self.nodes)

    @property
    def urls(self) -> list[str]:
        """Every node's client URL: what a service is given to find the cluster."""
        return [node.url for node in self.nodes]

    def node(self, name: str) -> ClusterNode:
        """The node with this server name."""
        (found,) = [node for node in self.nodes if node.name == name]
        return found

    def start(self) -> None:
        """Start every node and return once the cluster can take an R3 stream."""
        try:
            for node in self.nodes:
                node.start()  # a node's JetStream is enabled before its peers are up: one after the other is fine
            self.wait_ready()
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Poll every running node until its JetStream is enabled and it sees the meta leader and all its peers."""
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if time.monotonic() > deadline:
                raise NatsServerError(f"the cluster did not elect a meta leader within {timeout_s:.0f} s")
            time.sleep(POLL_S)

    def _ready(self) -> bool:
        leaders = set()
        for node in self.nodes:
            if not node.running:
                continue
            try:
                health = httpx.get(f"http://{node.host}:{node.monitor_port}/healthz?js-enabled-only=true", timeout=1.0)
                meta = node.monitor("/jsz").get("meta_cluster") or {}
            except httpx.HTTPError:
                return False
            peers = len(meta.get("replicas") or []) + 1
            if health.status_code != 200 or not meta.get("leader") or peers < len(self.nodes):
                return False
            leaders.add(meta["leader"])
        return len(leaders) == 1

    async def serving(self, client_name: str) -> ClusterNode:
        """The node a named client (``nats.connect(name=...)``) is connected to, once it is connected again."""
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            while True:
                node = await asyncio.to_thread(self._serving, client_name)
                if node is not None:
                    return node
                await asyncio.sleep(POLL_S)

    def _serving(self, client_name: str) -> ClusterNode | None:
        for node in self.nodes:
            if node.running:
                with contextlib.suppress(httpx.HTTPError):
                    if any(c.get("name") == client_name for c in node.monitor("/connz")["connections"]):
                        return node
        return None

    def stop(self) -> None:
        """Stop every node: a paused one is resumed first (a stopped process does not act on SIGTERM)."""
        for node in self.nodes:
            node.resume()
            node.stop()


@asynccontextmanager
async def jetstream(cluster: NatsCluster) -> AsyncIterator[JetStreamContext]:
    """The test's own view of the cluster, reconnecting quickly when its node goes away."""
    nc = NATS()

    async def on_error(_err: Exception) -> None:
        close_failed_attempt(nc)

    await nc.connect(cluster.urls, reconnect_time_wait=0.1, max_reconnect_attempts=-1, error_cb=on_error)
    try:
        yield nc.jetstream(timeout=2.0)
    finally:
        await nc.close()


async def stream_leader(js: JetStreamContext, stream: str) -> str:
    info = await js.stream_info(stream)
    assert info.cluster is not None and info.cluster.leader is not None
    return info.cluster.leader


async def replicas_current(js: JetStreamContext, stream: str, size: int = 3) -> None:
    """Poll until the stream has a leader and every other replica is online and caught up."""
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                cluster = (await js.stream_info(stream)).cluster
                replicas = (cluster.replicas or []) if cluster is not None else []
                if cluster is not None and cluster.leader and len(replicas) == size - 1:
                    if all(peer.current and not peer.offline for peer in replicas):
                        return
            await asyncio.sleep(0.1)


async def stored_ids(
    js: JetStreamContext, stream: str, subjects: str, msg_id: Callable[[dict[str, Any]], str] | None = None
) -> dict[int, str]:
    """Every message of the stream, read with an ordered consumer: stream sequence -> reading id.

    ``msg_id``, if given, is the ``Nats-Msg-Id`` every stored reading (as JSON) must carry: what the
    writer de-duplicated on. Right after a node came back the cluster may still be moving leaders: a
    read that times out, or that JetStream calls temporarily unavailable, is started again, within the
    phase's deadline.
    """
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        while True:
            try:
                return await read_all(js, stream, subjects, msg_id)
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                await asyncio.sleep(0.2)


async def read_all(
    js: JetStreamContext, stream: str, subjects: str, msg_id: Callable[[dict[str, Any]], str] | None
) -> dict[int, str]:
    count = (await js.stream_info(stream)).state.messages
    sub = await js.subscribe(subjects, ordered_consumer=True, stream=stream)
    stored: dict[int, str] = {}
    try:
        for _ in range(count):
            message = await sub.next_msg(timeout=5.0)
            assert message.headers is not None and message.data is not None
            reading = json.loads(message.data)
            if msg_id is not None:
                assert message.headers["Nats-Msg-Id"] == msg_id(reading)
            stored[message.metadata.sequence.stream] = reading["id"]
    finally:
        await sub.unsubscribe()
    return stored


class BackgroundWriters:
    """Tasks that store readings for as long as a fault test runs, counting what was acknowledged."""

    def __init__(self) -> None:
        self.stored = 0
        self.stopping = False
        self._stored_changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    def run(self, *writers: Coroutine[Any, Any, None]) -> None:
        """Start the writers; each stops once ``stopping`` is set and its current write is stored."""
        self._tasks += [asyncio.create_task(writer) for writer in writers]

    async def count_stored(self, readings: int) -> None:
        """A writer's readings were acknowledged."""
        async with self._stored_changed:
            self.stored += readings
            self._stored_changed.notify_all()

    async def stored_at_least(self, count: int) -> None:
        """Wait until ``count`` readings in all were acknowledged."""
        async with asyncio.timeout(PHASE_TIMEOUT_S), self._stored_changed:
            await self._stored_changed.wait_for(lambda: self.stored >= count)

    async def stop(self) -> None:
        """Let every writer finish what it is storing, then stop."""
        self.stopping = True
        async with asyncio.timeout(PHASE_TIMEOUT_S):
            await asyncio.gather(*self._tasks)


async def kill_and_restart(
    node: ClusterNode, js: JetStreamContext, stream: str, writers: BackgroundWriters, readings: int
) -> None:
    """SIGKILL ``node``; once ``readings`` more are stored on the other two, start it again, wait until the
    stream's replicas are current, and let ``readings`` more be stored."""
    node.kill()
    await writers.stored_at_least(writers.stored + readings)  # the cluster goes on with two nodes of three
    await asyncio.to_thread(node.start)
    await replicas_current(js, stream)
    await writers.stored_at_least(writers.stored + readings)
