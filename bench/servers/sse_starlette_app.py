"""Reference (c): sse-starlette's ``EventSourceResponse`` with one ``asyncio.Queue`` per client.

The NATS callback builds one ``ServerSentEvent`` per reading and puts the same object in every queue;
sse-starlette encodes it per client and sends it through its own task group per connection. Served
by uvicorn with uvloop and httptools behind a FastAPI route, like the stream service.

    python -m bench.servers.sse_starlette_app --port 9002 --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import nats
import uvicorn
from fastapi import FastAPI, Query
from nats.aio.msg import Msg
from sse_starlette import EventSourceResponse, ServerSentEvent


def create_app(nats_url: str, subject: str) -> FastAPI:
    """The app: a NATS subscription at start-up, one queue per open stream."""
    queues: set[asyncio.Queue[ServerSentEvent]] = set()
    seq = 0

    async def on_reading(msg: Msg) -> None:
        nonlocal seq
        seq += 1
        event = ServerSentEvent(f'{{"seq":{seq},{msg.data[1:].decode()}', id=str(seq), event="reading")
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

    @app.get("/v1/stream")
    async def stream(topic: Annotated[list[str], Query()]) -> EventSourceResponse:
        async def events() -> AsyncIterator[ServerSentEvent]:
            queue: asyncio.Queue[ServerSentEvent] = asyncio.Queue()
            queues.add(queue)
            try:
                yield ServerSentEvent(retry=2000)
                while True:
                    yield await queue.get()
            finally:
                queues.discard(queue)

        return EventSourceResponse(events())

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
