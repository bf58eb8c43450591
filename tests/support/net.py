"""Ports for test servers."""

from __future__ import annotations

import asyncio
import socket

import httpx

READY_DEADLINE_S = 20.0
SEND_DEADLINE_S = 30.0  # a send that blocks this long means the server stopped reading without closing


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
