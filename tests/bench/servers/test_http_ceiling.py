"""The HTTP ceiling of ``bench.ingest`` (bench/servers/http_ceiling.py), run as the benchmark runs it: a process of
its own on a real nats-server. It must store each POSTed body, whole, as one message of the ingest's stream, and
answer only once JetStream acknowledged it: else it would be cheaper than any ingest could be, for the wrong reason.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import nats
from nats.aio.msg import Msg
from support.net import free_port, wait_for_readyz

from core.jetstream import desired_stream
from core.settings import Settings
from telemetry.natsserver import LocalNatsServer

ROOT = Path(__file__).resolve().parents[3]
READING = (
    '{"site":"plant1","device":"dev-%05d","metric":"temperature","value":21.53,"ts":"2026-11-27T07:00:00.000Z",'
    '"unit":"C","tags":{"room":"east","line":"3"},"id":"t-%09d"}'
)
WAIT_S = 20.0


@asynccontextmanager
async def http_ceiling(settings: Settings, log: Path) -> AsyncIterator[str]:
    """``python -m bench.servers.http_ceiling`` on the settings' NATS, stream and prefix; its URL once it answers."""
    port = free_port()
    argv = ["--port", str(port), "--nats-url", settings.nats_urls[0], "--stream", settings.stream_name]
    argv += ["--prefix", settings.subject_prefix]
    with log.open("wb") as output:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.servers.http_ceiling", *argv, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_for_readyz(url)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_each_body_is_stored_whole_as_one_message_and_the_answer_names_its_sequence(
    nats_server: LocalNatsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await js.add_stream(desired_stream(settings))
    single = (READING % (7, 1)).encode()
    # About 200 KB: uvicorn hands such a body to the app in several pieces.
    batch = ("[" + ",".join(READING % (n, n) for n in range(1000)) + "]").encode()
    try:
        async with http_ceiling(settings, tmp_path / "ceiling.log") as url, httpx.AsyncClient(timeout=WAIT_S) as client:
            answers = [await client.post(f"{url}/v1/readings", content=body) for body in (single, batch)]
        assert [answer.status_code for answer in answers] == [202, 202]
        stored = [await js.get_msg(settings.stream_name, answer.json()["seq"]) for answer in answers]
        assert [message.data for message in stored] == [single, batch]
        assert (await js.stream_info(settings.stream_name)).state.messages == 2
        for message in stored:
            assert message.subject is not None
            prefix, site, device, metric = message.subject.split(".")
            assert (prefix, site, metric) == (settings.subject_prefix, "plant1", "temperature")
            assert device.startswith("dev-")
        ids = [(message.headers or {}).get("Nats-Msg-Id") for message in stored]
        assert None not in ids and ids[0] != ids[1]
    finally:
        await nc.close()


async def test_the_answer_waits_for_the_puback_and_carries_what_it_said(
    nats_server: LocalNatsServer, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # No stream holds these subjects: the test's own subscription answers in JetStream's place, when it chooses.
    settings = make_settings()
    nc = await nats.connect(nats_server.url)
    published: asyncio.Queue[Msg] = asyncio.Queue()
    subscription = await nc.subscribe(f"{settings.subject_prefix}.>", cb=published.put)
    await nc.flush()
    body = (READING % (3, 2)).encode()
    try:
        async with http_ceiling(settings, tmp_path / "ceiling.log") as url, httpx.AsyncClient(timeout=WAIT_S) as client:
            post = asyncio.create_task(client.post(f"{url}/v1/readings", content=body))
            async with asyncio.timeout(WAIT_S):
                message = await published.get()
            assert message.data == body
            assert message.headers is not None
            assert message.headers.get("Nats-Expected-Stream") == settings.stream_name
            assert not post.done()  # what a waiting server must show; an early answer need not have come yet
            await message.respond(b'{"stream":"%s","seq":41}' % settings.stream_name.encode())
            answer = await post
            assert (answer.status_code, answer.json()) == (202, {"seq": 41})  # 41: only the PubAck said so

            await subscription.unsubscribe()
            await nc.flush()
            refused = await client.post(f"{url}/v1/readings", content=body)  # no responder: JetStream never acked
            assert refused.status_code == 503
    finally:
        await nc.close()
