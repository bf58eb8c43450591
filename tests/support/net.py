"""Ports for test servers."""

from __future__ import annotations

import asyncio
import functools
import random
import socket
from pathlib import Path

import httpx

READY_DEADLINE_S = 20.0
SEND_DEADLINE_S = 30.0  # a send that blocks this long means the server stopped reading without closing


LOWEST_PORT = 10_000  # below: ports that services on a developer's machine tend to use
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


@functools.cache
def listening_ports() -> range:
    """Ports the kernel never gives an outgoing connection: those below its ephemeral range (read once a run)."""
    try:
        first_ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 32_768  # Linux's default
    return range(LOWEST_PORT, max(first_ephemeral, LOWEST_PORT + 1_000))


def free_port() -> int:
    """A TCP port nobody listens on right now, never handed out before in this run, outside the ephemeral range.

    A port from ``bind(("127.0.0.1", 0))`` is one the kernel also gives outgoing connections: between the test
    picking it and nats-server listening on it, a connection of the busy suite took it (CI, 2026-12-04).
    """
    ports = listening_ports()
    while len(_handed_out) < len(ports):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        _handed_out.add(port)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"every port of {ports} was handed out in this run")


async def wait_for_readyz(base_url: str, status: int = 200) -> None:
    """Poll /readyz until it answers ``status``: a service reaches NATS in the background, and the probe is
    what a user (or an orchestrator) has to know it."""
    async with httpx.AsyncClient() as client, asyncio.timeout(READY_DEADLINE_S):
        while True:
            try:
                if (await client.get(f"{base_url}/readyz")).status_code == status:
                    return
            except httpx.TransportError:
                pass  # a process that is still starting
            await asyncio.sleep(0.02)


def send_until_closed(url: str, head: bytes, piece: bytes, total_bytes: int) -> int:
    """Send ``head``, then ``piece`` again and again up to ``total_bytes``, until the server closes the connection;
    how many bytes of pieces went out. From a thread: the sends block while the server does not read."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=SEND_DEADLINE_S) as sock:
        try:
            sock.sendall(head)
            while sent < total_bytes:
                sock.sendall(piece)
                sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
    return sent
