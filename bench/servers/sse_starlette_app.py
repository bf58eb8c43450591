"""Reference (c): sse-starlette's ``EventSourceResponse`` with one ``asyncio.Queue`` per client.

The NATS callback builds one ``ServerSentEvent`` per reading and puts the same object in every queue;
sse-starlette encodes it per client and sends it through its own task group per connection. Served
by uvicorn with uvloop and httptools behind a FastAPI route, like the stream service.

    python -m bench.servers.sse_starlette_app --port 9002 --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import FastAPI, Query
from sse_starlette import EventSourceResponse, ServerSentEvent

from bench.servers.common import QueueFanout, serve_with_uvicorn


def create_app(nats_url: str, subject: str) -> FastAPI:
    """The app: a NATS subscription at start-up, one queue per open stream."""
    fanout = QueueFanout(nats_url, subject, lambda seq, data: ServerSentEvent(data, id=str(seq), event="reading"))
    app = FastAPI(lifespan=fanout.lifespan)

    @app.get("/v1/stream")
    async def stream(topic: Annotated[list[str], Query()]) -> EventSourceResponse:
        async def events() -> AsyncIterator[ServerSentEvent]:
            async with fanout.queue() as queue:
                yield ServerSentEvent(retry=2000)
                while True:
                    yield await queue.get()

        return EventSourceResponse(events())

    return app


if __name__ == "__main__":
    serve_with_uvicorn(__doc__.splitlines()[0], create_app)
