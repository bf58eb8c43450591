"""SIGTERM to a real ``telemetry stream`` process: readiness drops, every client is told to come back, it exits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import httpx
from support.net import free_port, wait_for_readyz

from core.settings import Settings

GRACE_S = 5


async def test_sigterm_drains_open_streams_and_exits(settings: Settings) -> None:
    port = free_port()
    env = {
        **os.environ,
        "TELEMETRY_NATS_URLS": settings.nats_urls[0],
        "TELEMETRY_STREAM_NAME": settings.stream_name,
        "TELEMETRY_SUBJECT_PREFIX": settings.subject_prefix,
        "TELEMETRY_STREAM_PORT": str(port),
        "TELEMETRY_SHUTDOWN_GRACE_S": str(GRACE_S),
        "TELEMETRY_OVERLOAD_RETRY_MS": "1000",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "telemetry", "stream", env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_for_readyz(url)
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=2 * GRACE_S)) as client,
            client.stream("GET", f"{url}/v1/stream", params={"topic": "a.>"}) as first,
            client.stream("GET", f"{url}/v1/stream", params={"topic": "b.>"}) as second,
        ):
            process.send_signal(signal.SIGTERM)
            bodies = [(await response.aread()).decode() for response in (first, second)]
        exit_code = await asyncio.wait_for(process.wait(), 2 * GRACE_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    for body in bodies:
        *_, retry, end = body.strip().split("\n\n")
        assert 500 <= int(retry.removeprefix("retry: ")) <= 1000
        # Ended by the drain: uvicorn's grace timeout would have cut the streams off without a word.
        assert end == 'event: end\ndata: {"reason":"shutdown"}'
    assert exit_code in (0, -signal.SIGTERM)
