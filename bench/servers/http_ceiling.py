"""The HTTP ceiling of ``bench.ingest``: each POSTed body stored in JetStream as it came, answered after its PubAck.

What any ingest over uvicorn must do per request, and nothing else: a bare ASGI app (no framework, no
routing, no parsing, no validation) under uvicorn with httptools and uvloop, one worker, no access log,
on loopback, as the ingest service runs. Every POST's body, whole, becomes one JetStream message through
nats-py's ``publish_async`` (``stream=`` and a ``Nats-Msg-Id`` header, as the ingest publishes), on a
subject of the ingest's layout, ``<prefix>.plant1.dev-NNNNN.temperature``, the device taken from a
counter (the body is never read); the answer, ``202 {"seq":N}`` with the PubAck's stream sequence, is sent
only once JetStream acknowledged. A batch body is one message: the ceiling is the cost of a request,
not of a reading. Any other method answers ``200`` (the harness's readiness probe). A publish that fails,
or is not acknowledged within ``PUBLISH_TIMEOUT_S``, is a ``503``.

    python -m bench.servers.http_ceiling --port 9003 --nats-url nats://127.0.0.1:4222 --stream S --prefix p
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import TYPE_CHECKING

import nats
import nats.errors
import uvicorn
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

PUBLISH_TIMEOUT_S = 5.0  # the ingest's default publish_timeout_s: no request waits for ever
DEVICES = 10_000  # the subjects cycle through as many devices as bench.ingest's readings
JSON = [(b"content-type", b"application/json")]


class HttpCeiling:
    """The ASGI app: its NATS connection lives as long as uvicorn's lifespan."""

    def __init__(self, nats_url: str, stream: str, prefix: str, devices: int = DEVICES) -> None:
        self.nats_url = nats_url
        self.stream = stream
        self.prefix = prefix
        self.devices = devices
        self.tag = f"http-{time.time_ns()}"  # message ids unique over every ceiling process of a run
        self.count = 0
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.lifespan(receive, send)
        elif scope["method"] == "POST":
            await self.store(receive, send)
        else:
            await answer(send, 200, b'{"ready":true}')

    async def lifespan(self, receive: Receive, send: Send) -> None:
        """Connect at start-up (uvicorn listens only afterwards), close at shutdown."""
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    self.nc = await nats.connect(self.nats_url)
                except Exception as err:  # uvicorn exits with this message: the harness sees the process end
                    await send({"type": "lifespan.startup.failed", "message": repr(err)})
                    return
                self.js = self.nc.jetstream()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.nc is not None:
                    await self.nc.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def store(self, receive: Receive, send: Send) -> None:
        """Publish the body as one message; 202 with its stream sequence once JetStream acknowledged it."""
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body", False):
            message = await receive()
            body += message.get("body", b"")
        assert self.js is not None
        self.count += 1
        count = self.count
        subject = f"{self.prefix}.plant1.dev-{count % self.devices:05d}.temperature"
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                acked = await self.js.publish_async(
                    subject, body, stream=self.stream, headers={"Nats-Msg-Id": f"{self.tag}-{count}"}
                )
                ack = await acked
        except (nats.errors.Error, TimeoutError) as err:
            await answer(send, 503, b'{"error":"%s"}' % type(err).__name__.encode())
            return
        await answer(send, 202, b'{"seq":%d}' % ack.seq)


async def answer(send: Send, status: int, body: bytes) -> None:
    """A complete JSON response in two ASGI messages, as small as uvicorn allows."""
    start: Message = {
        "type": "http.response.start",
        "status": status,
        "headers": [*JSON, (b"content-length", b"%d" % len(body))],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """Serve until SIGTERM with the ingest service's uvicorn settings that bear on a request's cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--stream", required=True, help="the JetStream stream the subjects belong to")
    parser.add_argument("--prefix", required=True, help="the subject prefix, as TELEMETRY_SUBJECT_PREFIX")
    parser.add_argument("--devices", type=int, default=DEVICES, help="how many device subjects to cycle through")
    args = parser.parse_args()
    uvicorn.run(
        HttpCeiling(args.nats_url, args.stream, args.prefix, args.devices),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",  # uvicorn's own protocol: the ingest's guards against hostile clients are its own cost
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,  # as the ingest service
        proxy_headers=False,  # the ingest trusts X-Forwarded-For for its per-client limits: a feature, not HTTP
        timeout_graceful_shutdown=1,
    )


if __name__ == "__main__":
    main()
