"""The lean subscriber connection against a real nats-server: whole messages, back-pressure, credentials, server
errors, loss."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import httpx
import nats
import pytest
from structlog.testing import capture_logs
from support.natsproc import AuthNatsServer, StoppableNatsServer

from stream.upstream import ack_sequences, header_fields
from stream.wire import MAX_PARSED_BYTES, Delivery, WireError, WireSubscriber
from telemetry.natsserver import LocalNatsServer


async def gather(subscriber: WireSubscriber, count: int) -> list[Delivery]:
    """Take batches until ``count`` deliveries have come."""
    deliveries: list[Delivery] = []
    while len(deliveries) < count:
        deliveries.extend(await subscriber.next_batch())
    return deliveries


class ReadSizeRecorder(WireSubscriber):
    """A subscriber that notes the largest single socket read, which depends on the event loop."""

    largest_read = 0

    def data_received(self, data: bytes) -> None:
        self.largest_read = max(self.largest_read, len(data))
        super().data_received(data)


# One user who may not publish to denied.> nor subscribe to secret.>, and may do anything else.
PERMISSIONS = """
authorization {
  users = [
    {user: "dash", password: "s3cret", permissions: {publish: {deny: ["denied.>"]}, subscribe: {deny: ["secret.>"]}}}
  ]
}
"""


@pytest.fixture
def restricted_url(tmp_path: Path) -> Iterator[str]:
    """The URL, with credentials, of a nats-server of the test's own whose one user has ``PERMISSIONS``."""
    config = tmp_path / "nats.conf"
    config.write_text(PERMISSIONS)
    server = AuthNatsServer(tmp_path, "-c", str(config))
    server.start()
    yield f"nats://dash:s3cret@{server.host}:{server.port}"
    server.stop()


async def test_every_message_arrives_whole_and_in_order_whatever_its_size_headers_or_reply(
    nats_server: LocalNatsServer,
) -> None:
    prefix = f"wire.{uuid.uuid4().hex}"
    subscriber = await WireSubscriber.open(urlparse(nats_server.url), f"{prefix}.>", name="test")
    nc = await nats.connect(nats_server.url)
    sizes = [0, 1, 100, 70_000, 300_000, 5, 1_000_000 - 200]  # larger ones span many socket reads
    sent: list[tuple[bytes, bytes, dict[str, str] | None, bytes]] = []
    try:
        for round_ in range(30):
            for index, size in enumerate(sizes):
                payload = bytes([65 + (round_ + index) % 26]) * size
                target, reply = f"{prefix}.m{round_}.{index}", f"reply.{round_}.{index}" if index % 2 else ""
                headers = {"Nats-Msg-Id": f"id-{round_}-{index}"} if index % 3 else None
                await nc.publish(target, payload, reply=reply, headers=headers)
                sent.append((target.encode(), reply.encode(), headers, payload))
        await nc.flush()
        received = await gather(subscriber, len(sent))
    finally:
        subscriber.close()
        await nc.close()
    assert len(received) == len(sent)
    for got, (sent_subject, sent_reply, sent_headers, sent_payload) in zip(received, sent, strict=True):
        assert (got[0], got[1], got[3]) == (sent_subject, sent_reply, sent_payload)
        if sent_headers:
            assert header_fields(got[2]) == {b"Nats-Msg-Id": sent_headers["Nats-Msg-Id"].encode()}
        else:
            assert got[2] == b""


async def test_a_reader_that_falls_behind_stops_reading_and_loses_nothing(nats_server: LocalNatsServer) -> None:
    subject, name = f"wire.{uuid.uuid4().hex}", f"behind-{uuid.uuid4().hex}"
    subscriber = await ReadSizeRecorder.open(urlparse(nats_server.url), subject, name=name)
    assert isinstance(subscriber, ReadSizeRecorder)
    nc = await nats.connect(nats_server.url)
    count, size = 10_000, 4096  # 40 MB: ten times what the subscriber parses ahead of its reader
    try:
        for index in range(count):
            await nc.publish(subject, index.to_bytes(4, "big") * (size // 4))
        await nc.flush()
        await server_has_sent(nats_server, name, count)  # the loop ran meanwhile, ready to parse it all
        first = await subscriber.next_batch()
        received = first + await gather(subscriber, count - len(first))
    finally:
        subscriber.close()
        await nc.close()
    # Reading pauses once more than MAX_PARSED_BYTES wait: the read that went past it is the most it can overshoot.
    assert sum(len(delivery[3]) for delivery in first) <= MAX_PARSED_BYTES + subscriber.largest_read
    assert [int.from_bytes(delivery[3][:4], "big") for delivery in received] == list(range(count))


async def server_has_sent(server: LocalNatsServer, name: str, count: int) -> None:
    """Wait until the server has queued ``count`` messages to the connection called ``name`` (its /connz)."""
    async with httpx.AsyncClient() as client, asyncio.timeout(30):
        while True:
            connz = (await client.get(f"http://{server.host}:{server.monitor_port}/connz")).json()
            if any(c.get("name") == name and c["out_msgs"] >= count for c in connz["connections"] or []):
                return
            await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("auth", "good", "bad"),
    [
        (("--user", "dash", "--pass", "s3cret"), "dash:s3cret@", "dash:wrong@"),
        (("--auth", "t0ken"), "t0ken@", "other@"),
    ],
    ids=["user-password", "token"],
)
async def test_credentials_in_the_url_are_presented_and_wrong_ones_refused(
    tmp_path: Path, auth: tuple[str, ...], good: str, bad: str
) -> None:
    server = AuthNatsServer(tmp_path, *auth)
    server.start()
    try:
        url = f"nats://{good}{server.host}:{server.port}"
        subscriber = await WireSubscriber.open(urlparse(url), "secured", name="test")
        nc = await nats.connect(url)
        await nc.publish("secured", b"ok")
        await nc.flush()
        assert [delivery[3] for delivery in await gather(subscriber, 1)] == [b"ok"]
        subscriber.close()
        await nc.close()
        with pytest.raises(WireError, match="Authorization Violation"):
            await WireSubscriber.open(urlparse(f"nats://{bad}{server.host}:{server.port}"), "secured", name="test")
    finally:
        server.stop()


async def test_a_server_error_after_the_handshake_is_logged_and_the_subscription_goes_on(restricted_url: str) -> None:
    with capture_logs() as logs:
        subscriber = await WireSubscriber.open(urlparse(restricted_url), "feed", name="test")
        nc = await nats.connect(restricted_url)
        try:
            subscriber.publish_empty(b"denied.subject")  # the server answers -ERR and keeps the connection
            subscriber.publish_empty(b"feed")  # answered after that -ERR: the server handles a connection in order
            first = await gather(subscriber, 1)
            await nc.publish("feed", b"later")
            await nc.flush()
            later = await gather(subscriber, 1)
        finally:
            subscriber.close()
            await nc.close()
    assert [delivery[3] for delivery in first + later] == [b"", b"later"]
    assert [entry for entry in logs if entry["event"] == "nats_server_error"] == [
        {
            "event": "nats_server_error",
            "error": 'Permissions Violation for Publish to "denied.subject"',
            "log_level": "warning",
        }
    ]


async def test_a_subscription_the_server_refuses_fails_the_handshake(restricted_url: str) -> None:
    with pytest.raises(WireError, match=re.escape('Permissions Violation for Subscription to "secret.feed"')):
        await WireSubscriber.open(urlparse(restricted_url), "secret.feed", name="test")


async def test_a_connection_the_server_closes_after_an_error_names_the_error(nats_server: LocalNatsServer) -> None:
    subscriber = await WireSubscriber.open(urlparse(nats_server.url), f"wire.{uuid.uuid4().hex}", name="test")
    subscriber.write(b"PUB too.large 100000000\r\n")  # beyond max_payload: the server answers -ERR and closes
    with pytest.raises(WireError, match="connection closed after the NATS server error: Maximum Payload Violation"):
        await subscriber.next_batch()


async def test_a_refused_or_lost_connection_is_a_wire_error(own_nats: StoppableNatsServer, unused_port: int) -> None:
    with pytest.raises(WireError, match="cannot connect"):
        await WireSubscriber.open(urlparse(f"nats://127.0.0.1:{unused_port}"), "x", name="test")
    subscriber = await WireSubscriber.open(urlparse(own_nats.url), "x", name="test")
    own_nats.stop()
    with pytest.raises(WireError, match="connection"):
        await subscriber.next_batch()


def test_jetstream_ack_subjects_give_stream_sequence_consumer_sequence_and_pending() -> None:
    assert ack_sequences(b"$JS.ACK.TELEMETRY.c1.1.812.3.1764230400000000000.42") == (812, 3, 42)
    assert ack_sequences(b"$JS.ACK.hub.ACCHASH.TELEMETRY.c1.1.812.3.1764230400000000000.42.tok") == (812, 3, 42)
    assert ack_sequences(b"reply.1.2") is None
    assert ack_sequences(b"") is None
