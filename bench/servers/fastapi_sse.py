"""Reference (b): FastAPI's documented SSE endpoint, a generator with ``response_class=EventSourceResponse``.

One ``asyncio.Queue`` per client; the NATS callback builds one ``ServerSentEvent`` per reading and puts
the same object in every queue (the kindest version of the tutorial's pattern: FastAPI still encodes
it per client). Served by uvicorn with uvloop and httptools, like the stream service.

    python -m bench.servers.fastapi_sse --port 9001 --nats-url nats://127.0.0.1:4222
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from typing import Annotated

from fastapi import FastAPI, Query
from fastapi.sse import EventSourceResponse, ServerSentEvent

from bench.servers.common import QueueFanout, serve_with_uvicorn


def create_app(nats_url: str, subject: str) -> FastAPI:
    """The app: a NATS subscription at start-up, one queue per open stream."""
    fanout = QueueFanout(
        nats_url, subject, lambda seq, data: ServerSentEvent(raw_data=data, id=str(seq), event="reading")
    )
    app = FastAPI(lifespan=fanout.lifespan)

    @app.get("/v1/stream", response_class=EventSourceResponse)
    async def stream(topic: Annotated[list[str], Query()]) -> AsyncIterable[ServerSentEvent]:
        async with fanout.queue() as queue:
            yield ServerSentEvent(retry=2000)
            while True:
                yield await queue.get()

    return app


if __name__ == "__main__":
    serve_with_uvicorn(__doc__.splitlines()[0], create_app)
