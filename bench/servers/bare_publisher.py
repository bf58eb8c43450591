"""The bare publisher of ``bench.ingest``: a nats-py loop that publishes what the ingest stores, measuring itself.

No HTTP and no validation: the payload the ingest stores for the readings the load generator posts (built
once, then formatted per message), on the subject and with the ``Nats-Msg-Id`` header the ingest gives each,
through nats-py's ``publish_async`` with ``stream=``, keeping ``in_flight`` unacknowledged at most (what
the workload's clients have waiting). It counts acknowledgements and reads its own CPU time over a window
after a warm-up, then prints the window as one line of JSON (a ``bench.ingestload.Measure``).

    python -m bench.servers.bare_publisher --nats-url nats://127.0.0.1:4222 --stream S --prefix p \
        --in-flight 800 --warmup-s 3 --duration-s 15 --tag t1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
from datetime import UTC, datetime

import nats
import uvloop
from nats.js.api import PubAck

from bench.ingestload import DEVICES, READING, Mark, Measure, mark, window
from core.readings import Reading, stored_payload


async def bare_publisher(
    nats_url: str, stream: str, prefix: str, in_flight: int, warmup_s: float, duration_s: float, tag: str
) -> Measure:
    """Publish stored payloads with ``in_flight`` unacknowledged at most, as the ingest does; measure a window."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=in_flight)
    # The payload the ingest stores for the readings the load generator posts, built as cheaply as possible.
    stored = stored_payload(Reading.model_validate_json(READING % (0, tag, 0)), datetime.now(UTC))
    template = stored.replace(b"dev-00000", b"dev-%05d").replace(b"%s-000000000" % tag.encode(), b"%s-%09d")
    assert template.count(b"%") == 4, template
    acked = 0

    def count(future: asyncio.Future[PubAck]) -> None:
        nonlocal acked
        if not future.cancelled() and future.exception() is None:
            acked += 1

    loop = asyncio.get_running_loop()
    start = loop.time()
    marks: list[Mark] = []
    sequence = 0
    while len(marks) < 2:
        now = loop.time()
        if now - start >= warmup_s + (duration_s if marks else 0.0):
            marks.append(mark(acked, os.getpid()))
        for _ in range(100):
            sequence += 1
            device = sequence % DEVICES
            future = await js.publish_async(
                f"{prefix}.plant1.dev-{device:05d}.temperature",
                template % (device, device, tag.encode(), sequence),
                stream=stream,
                headers={"Nats-Msg-Id": f"plant1.dev-{device:05d}.{tag}-{sequence:09d}"},  # as ingest writes it
            )
            future.add_done_callback(count)
    await js.publish_async_completed()
    await nc.close()
    return window(*marks)


def main() -> None:
    """Run one window with the flags' numbers; its measure on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nats-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--prefix", required=True, help="the subject prefix, as TELEMETRY_SUBJECT_PREFIX")
    parser.add_argument("--in-flight", type=int, required=True)
    parser.add_argument("--warmup-s", type=float, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--tag", required=True, help="makes the readings' ids unique over the run")
    args = parser.parse_args()
    measure = uvloop.run(
        bare_publisher(
            args.nats_url, args.stream, args.prefix, args.in_flight, args.warmup_s, args.duration_s, args.tag
        )
    )
    print(json.dumps(dataclasses.asdict(measure)), flush=True)


if __name__ == "__main__":
    main()
