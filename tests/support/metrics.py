"""Reading a service's /metrics as a user's Prometheus would."""

from __future__ import annotations

import asyncio

import httpx
from support.sse import EVENT_TIMEOUT_S


async def metric(url: str, name: str) -> float:
    """One sample of the service's /metrics (0 when the series has no sample yet)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def metric_becomes(url: str, name: str, value: float, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Poll a metric until it shows ``value``: the server counts a stream's end after the client saw it."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await metric(url, name) == value:
                return
            await asyncio.sleep(0.02)
