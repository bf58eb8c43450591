"""Reference (b): FastAPI's documented SSE endpoint, a generator with ``response_class=EventSourceResponse``.

One ``asyncio.Queue`` per client; the NATS callback builds one ``ServerSentEvent`` per reading and puts
the same object in every queue (the kindest version of the tutorial's pattern: FastAPI still encodes
it per client). Served by uvicorn with uvloop and httptools, like the stream service.

    python -m bench.servers.fastapi_sse --port 9001 --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import nats
import uvicorn
from fastapi import FastAPI, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent
from nats.aio.msg import Msg


def create_app(nats_url: str, subject: str) -> FastAPI:
    """The app: a NATS subscription at start-up, one queue per open stream."""
    queues: set[asyncio.Queue[ServerSentEvent]] = set()
    seq = 0

    async def on_reading(msg: Msg) -> None:
        nonlocal seq
        seq += 1
        event = ServerSentEvent(raw_data=f'{{"seq":{seq},{msg.data[1:].decode()}', id=str(seq), event="reading")
        for queue in queues:
            queue.put_nowait(event)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
        await nc.subscribe(subject, cb=on_reading)
        await nc.flush()
        yield
        await nc.close()

    app = FastAPI(lifespan=lifespan)

    @app.get("/v1/stream", response_class=EventSourceResponse)
    async def stream(topic: Annotated[list[str], Query()]) -> AsyncIterable[ServerSentEvent]:
        queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
        queues.add(queue)
        try:
            yield ServerSentEvent(retry=2000)
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    return app


def main() -> None:
    """Parse the flags and serve until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--subject", default="telemetry.>")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    app = create_app(args.nats_url, args.subject)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
