"""The SSE endpoint over a real socket against a real nats-server: frames, headers, keep-alive, resume."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from httpx_sse import ServerSentEvent
from structlog.testing import capture_logs
from support.metrics import metric
from support.server import on_server_loop, suspended_chains
from support.sse import EVENT_TIMEOUT_S, Serve, events, raw_connection, raw_requests, seqs, take

from core.frontroutes import FrontRoutedApp
from core.requestids import add_request_id
from core.settings import Settings
from stream.app import create_app
from stream.connection import Connection

SENTINEL = -1.0
STREAM_LINES = ("stream_opened", "stream_closed", "stream_refused")
LogLine = dict[str, Any]


def stream_lines(logs: list[LogLine]) -> list[LogLine]:
    """The lines a stream's life is logged with (stream/sse.py), in order."""
    return [line for line in logs if line["event"] in STREAM_LINES]


async def logged(logs: list[LogLine], event: str, count: int = 1) -> list[LogLine]:
    """The ``event`` lines, once there are ``count``: the server logs a stream's close after its client left."""
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while True:
            found = [line for line in logs if line["event"] == event]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)


async def test_live_reading_arrives_as_one_event(settings: Settings, serve: Serve, publish: Any) -> None:
    async with serve(create_app(settings)) as url, events(url, "plant1.*.temperature") as stream:
        [seq] = await publish("plant1", "boiler-7", "temperature", [21.5])
        [event] = await take(stream, 1)
    assert event.event == "reading"
    assert event.id == str(seq)
    data = json.loads(event.data)
    assert data["seq"] == seq
    assert data["topic"] == "plant1.boiler-7.temperature"
    assert data["value"] == 21.5
    assert data["device"] == "boiler-7" and data["site"] == "plant1" and data["metric"] == "temperature"
    assert "received_at" in data


async def test_headers_retry_hint_and_keepalive(make_settings: Callable[..., Settings], serve: Serve) -> None:
    settings = make_settings(keepalive_s=0.2, retry_ms=1234)
    async with (
        serve(create_app(settings)) as url,
        httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client,
        client.stream("GET", f"{url}/v1/stream", params={"topic": "a.b.c"}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        lines: list[str] = []

        async def read_until_two_keepalives() -> None:
            async for line in response.aiter_lines():
                lines.append(line)
                if sum(line.startswith(":") for line in lines) == 2:
                    return

        await asyncio.wait_for(read_until_two_keepalives(), EVENT_TIMEOUT_S)
    assert lines[0] == "retry: 1234"
    assert [line for line in lines if line.startswith(":")] == [": keep-alive", ": keep-alive"]


async def test_patterns_route_each_event_once(settings: Settings, serve: Serve, publish: Any) -> None:
    async with (
        serve(create_app(settings)) as url,
        events(url, "plant1.*.temperature", "plant1.>", "*.boiler-7.temperature") as overlapping,
        events(url, "plant2.>") as other_site,
    ):
        a = await publish("plant1", "boiler-7", "temperature", [1.0])
        b = await publish("plant1", "pump-2", "pressure", [2.0])
        c = await publish("plant2", "pump-2", "pressure", [3.0])
        d = await publish("plant1", "boiler-7", "temperature", [4.0])
        got_overlapping = await take(overlapping, 3)
        got_other = await take(other_site, 1)
    assert seqs(got_overlapping) == a + b + d
    assert seqs(got_other) == c


async def test_resume_after_disconnect_gets_exactly_the_missed_readings(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    async with serve(create_app(settings)) as url:
        async with events(url, "s.>") as stream:
            first = await publish("s", "d", "m", [1, 2, 3])
            seen = await take(stream, 3)
        assert seqs(seen) == first
        missed = await publish("s", "d", "m", [4, 5, 6])
        await publish("other", "d", "m", [7])
        async with events(url, "s.>", headers={"Last-Event-ID": seen[-1].id}) as stream:
            replayed = await take(stream, 3)
            live = await publish("s", "d", "m", [8])
            [after] = await take(stream, 1)
    assert seqs(replayed) == missed
    assert [json.loads(e.data)["value"] for e in replayed] == [4, 5, 6]
    assert seqs([after]) == live


async def test_last_event_id_zero_replays_from_the_beginning(settings: Settings, serve: Serve, publish: Any) -> None:
    stored = await publish("s", "d", "m", [1, 2])
    async with serve(create_app(settings)) as url, events(url, "s.d.m", last_event_id=0) as stream:
        assert seqs(await take(stream, 2)) == stored


async def test_header_wins_over_query_parameter(settings: Settings, serve: Serve, publish: Any) -> None:
    stored = await publish("s", "d", "m", [1, 2, 3])
    async with (
        serve(create_app(settings)) as url,
        events(url, "s.d.m", last_event_id=0, headers={"Last-Event-ID": str(stored[1])}) as stream,
    ):
        assert seqs(await take(stream, 1)) == stored[2:]


async def test_without_an_id_the_stream_starts_live(settings: Settings, serve: Serve, publish: Any) -> None:
    await publish("s", "d", "m", [1, 2])
    async with serve(create_app(settings)) as url, events(url, "s.d.m") as stream:
        live = await publish("s", "d", "m", [3])
        assert seqs(await take(stream, 1)) == live


async def test_resume_racing_live_traffic_loses_and_doubles_nothing(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    """Readings keep arriving while many clients replay: each sees every reading once, in order."""
    settings = make_settings(max_rate_per_s=1e6)  # no conflation: every reading must arrive
    before = await publish("race", "d", "m", list(range(200)))
    published: list[int] = list(before)

    async def keep_publishing() -> None:
        for value in range(300):
            published.extend(await publish("race", "d", "m", [value]))

    async def resume_and_collect(url: str, after: int) -> list[int]:
        async with events(url, "race.>", headers={"Last-Event-ID": str(after)}) as stream:
            received: list[ServerSentEvent] = []
            while not received or json.loads(received[-1].data)["value"] != SENTINEL:
                received += await take(stream, 1)
            return seqs(received)

    async with serve(create_app(settings)) as url:
        publisher = asyncio.create_task(keep_publishing())
        starts = [before[0] - 1, before[50], before[-1]]
        clients = [asyncio.create_task(resume_and_collect(url, after)) for after in starts for _ in range(3)]
        await publisher
        published.extend(await publish("race", "d", "m", [SENTINEL]))
        results = await asyncio.gather(*clients)
    for after, received in zip([s for s in starts for _ in range(3)], results, strict=True):
        assert received == [seq for seq in published if seq > after]


async def test_reset_when_history_is_gone(make_settings: Callable[..., Settings], serve: Serve, publish: Any) -> None:
    settings = make_settings(stream_max_msgs_per_subject=5)
    stored = await publish("s", "d", "m", list(range(20)))
    kept = stored[-5:]
    async with serve(create_app(settings)) as url, events(url, "s.>", headers={"Last-Event-ID": str(stored[2])}) as s:
        reset, *replayed = await take(s, 6)
    assert reset.event == "reset"
    assert reset.id == ""  # a reset must not move the client's resume point
    assert json.loads(reset.data) == {
        "reason": "history_expired",
        "requested_id": stored[2],
        "first_available_id": kept[0],
    }
    assert seqs(replayed) == kept


async def test_id_beyond_the_stream_resets_to_everything_stored(settings: Settings, serve: Serve, publish: Any) -> None:
    stored = await publish("s", "d", "m", [1, 2])
    async with serve(create_app(settings)) as url, events(url, "s.>", headers={"Last-Event-ID": "999999"}) as s:
        reset, *replayed = await take(s, 3)
    assert json.loads(reset.data) == {"reason": "unknown_id", "requested_id": 999999, "first_available_id": stored[0]}
    assert seqs(replayed) == stored


@pytest.mark.parametrize(
    ("params", "headers", "field"),
    [
        ({"topic": "a..b"}, {}, "topic"),
        ({"topic": ">.x"}, {}, "topic"),
        ({"topic": "a.b"}, {}, "topic"),
        ({"topic": "a.b.c.d"}, {}, "topic"),
        ({"topic": "a.b$.c"}, {}, "topic"),
        ({}, {}, "topic"),
        ({"topic": "a.b.c", "last_event_id": "-1"}, {}, "last_event_id"),
        ({"topic": "a.b.c"}, {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ({"topic": "a.b.c", "last_event_id": ""}, {"Last-Event-ID": "1"}, "last_event_id"),  # found by the fuzzer
        ({"topic": "a.b.c", "max_events": "9" * 400}, {}, "max_events"),  # overflowed a float: was a 500
        ({"topic": "a.b.c", "max_events": "0"}, {}, "max_events"),
        ({"topic": "a.b.c", "max_events": "2.5"}, {}, "max_events"),
        ({"topic": "a.b.c", "rate": "1e999"}, {}, "rate"),
        ({"topic": "a.b.c", "rate": "inf"}, {}, "rate"),
        ({"topic": "a.b.c", "rate": "nan"}, {}, "rate"),
        ({"topic": "a.b.c", "rate": "9" * 400}, {}, "rate"),
        ({"topic": "a.b.c", "rate": "-1"}, {}, "rate"),
    ],
)
async def test_bad_requests_get_a_400_naming_the_field(
    settings: Settings, serve: Serve, params: dict[str, str], headers: dict[str, str], field: str
) -> None:
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        response = await client.get(f"{url}/v1/stream", params=params, headers=headers)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["field"] == field
    assert error["message"]


async def test_a_long_bad_value_is_not_echoed_whole(settings: Settings, serve: Serve) -> None:
    pattern = "a." + "x" * 10_000 + ".c"
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        response = await client.get(f"{url}/v1/stream", params={"topic": pattern})
    message = response.json()["error"]["message"]
    assert response.status_code == 400
    assert "token 2 of 'a.xxx" in message
    assert len(message) < 400


@pytest.mark.parametrize("http", ["httptools", "h11"])
async def test_a_request_pipelined_behind_a_stream_is_never_served(
    settings: Settings, serve: Serve, publish: Any, http: str
) -> None:
    """An SSE response says ``Connection: close``: what was pipelined behind it is dropped with the connection."""
    await publish("s", "d", "m", [1.0])
    async with serve(create_app(settings), http=http) as url:
        reader, writer = await raw_connection(url)
        writer.write(raw_requests("/v1/stream?topic=s.%3E&last_event_id=0&max_events=1", "/healthz"))
        received = await asyncio.wait_for(reader.read(), EVENT_TIMEOUT_S)  # until the server closes
        writer.close()
        await writer.wait_closed()
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in head.lower()
    assert received.count(b"HTTP/1.1 ") == 1
    assert b'data: {"reason":"max_events"}' in body
    assert body.endswith(b"0\r\n\r\n")  # the stream's last chunk, and nothing after it


async def test_not_ready_without_nats(make_settings: Callable[..., Settings], serve: Serve) -> None:
    """/readyz says 503; a stream is a 200 with a retry hint and an end event, as a browser's EventSource gives up
    for good on any other answer: a page keeps trying until the service is back. It is logged as refused, once."""
    settings = make_settings(nats_urls=["nats://127.0.0.1:1"])
    with capture_logs() as logs:
        async with serve(create_app(settings), ready=False) as url, httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/healthz")).status_code == 200
            ready = await client.get(f"{url}/readyz")
            stream = await client.get(f"{url}/v1/stream", params={"topic": "a.b.c"})
            refused = await metric(url, 'telemetry_stream_refused_connections_total{reason="not_ready"}')
    assert [(line["event"], line["reason"]) for line in stream_lines(logs)] == [("stream_refused", "not_ready")]
    assert ready.status_code == 503
    assert "NATS" in ready.json()["reason"]
    assert stream.status_code == 200
    assert stream.headers["content-type"].startswith("text/event-stream")
    retry, end = stream.text.strip().split("\n\n")
    assert 0 < int(retry.removeprefix("retry: ")) <= settings.retry_ms
    assert end == 'event: end\ndata: {"reason":"not_ready"}'
    assert refused == 1


async def test_metrics_count_connections_and_events(settings: Settings, serve: Serve, publish: Any) -> None:
    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        async with events(url, "m.>") as stream:
            await publish("m", "d", "x", [1, 2])
            await take(stream, 2)
            during = (await client.get(f"{url}/metrics")).text
        assert "telemetry_stream_connections_active 1.0" in during
        assert "telemetry_stream_events_sent_total 2.0" in during


async def test_replay_beyond_the_limit_starts_with_a_reset(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    settings = make_settings(max_replay=3)
    stored = await publish("s", "d", "m", [1, 2, 3, 4, 5, 6])
    async with serve(create_app(settings)) as url, events(url, "s.>", last_event_id=0) as stream:
        reset, *replayed = await take(stream, 4)
    assert json.loads(reset.data) == {"reason": "replay_limit", "requested_id": 0, "first_available_id": stored[3]}
    assert seqs(replayed) == stored[3:]


async def test_the_generic_asgi_write_path_serves_the_same_stream(
    make_settings: Callable[..., Settings], serve: Serve, publish: Any
) -> None:
    """On uvicorn's h11 protocol the hub cannot write pre-framed chunks: every write goes through ``send``."""
    settings = make_settings(max_rate_per_s=1e6)
    before = await publish("s", "d", "m", [1, 2])
    async with (
        serve(create_app(settings), http="h11") as url,
        events(url, "s.>", last_event_id=0, max_events=5) as stream,
    ):
        replayed = await take(stream, 2)
        live = await publish("s", "d", "m", [3, 4, 5])
        *received, end = await take(stream, 4)
    assert seqs(replayed) + seqs(received) == before + live
    assert json.loads(end.data) == {"reason": "max_events"}


async def test_a_stream_is_logged_as_it_opens_and_as_it_closes_under_its_request_id(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    await publish("s", "d", "m", [1, 2, 3, 4, 5])
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(create_app(settings)) as url:
            headers = {"X-Request-ID": "dash-7.req:1"}
            async with events(url, "s.>", "x.*.m", last_event_id=0, max_events=3, headers=headers) as stream:
                received = await take(stream, 4)
            await logged(logs, "stream_closed")
    assert [event.event for event in received] == ["reading"] * 3 + ["end"]
    opened, closed = stream_lines(logs)
    same = {"log_level": "info", "request_id": "dash-7.req:1", "patterns": ["s.>", "x.*.m"], "client": "127.0.0.1"}
    assert opened == {"event": "stream_opened", **same, "start": "resume", "resume_after": 0}
    duration_s, written = closed.pop("duration_s"), closed.pop("bytes")
    assert closed == {"event": "stream_closed", **same, "events": 3, "reason": "max_events"}
    assert written > sum(len(event.data) for event in received)
    assert 0 <= duration_s < EVENT_TIMEOUT_S and round(duration_s, 3) == duration_s


async def test_an_open_stream_holds_none_of_its_request_headers_and_what_it_read_of_them_still_counts(
    settings: Settings, serve: Serve, publish: Any
) -> None:
    """uvicorn keeps a request's header list for as long as it is served: a browser's is 2-4 KB of every open stream."""
    stored = await publish("s", "d", "m", [1, 2])
    app = create_app(settings)
    browser = {"User-Agent": "Mozilla/5.0 " + "x" * 200, "Cookie": "theme=dark; " + "y" * 2000}
    headers = {**browser, "Last-Event-ID": str(stored[0]), "X-Request-ID": "dash-2"}
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(app) as url:
            async with events(url, "s.>", headers=headers) as stream:
                replayed = await take(stream, 1)
                held = await on_server_loop(app, headers_held(app))
            [closed] = await logged(logs, "stream_closed")
    assert held == [[]]
    assert seqs(replayed) == stored[1:]  # resumed after its Last-Event-ID
    assert closed["request_id"] == "dash-2"


async def headers_held(app: FrontRoutedApp) -> list[list[tuple[bytes, bytes]]]:
    """The request headers uvicorn holds for each request it is answering."""
    connections = app.state.test_server.server_state.connections
    return [
        protocol.cycle.scope["headers"]
        for protocol in connections
        if protocol.cycle is not None and not protocol.cycle.response_complete
    ]


async def test_an_open_stream_is_one_suspended_call_of_the_endpoint(settings: Settings, serve: Serve) -> None:
    """Its checks, admission, plan and start are done once it is open: a call of the endpoint's own waiting above the
    stream would be held for the hours it is open, for every open stream (bench idle memory)."""
    app = create_app(settings)
    async with serve(app) as url, events(url, "s.>"):
        # The stream's task ran from its start to its wait for the client in one step, the one that sent the head.
        chains = await on_server_loop(app, suspended_chains())
    [chain] = [chain for chain in chains if any(name.startswith("EventStream.") for name in chain)]
    assert chain[:2] == ["RequestResponseCycle.run_asgi", "EventStream._serve"]
    assert [name for name in chain if name.startswith("EventStream.")] == ["EventStream._serve"]


async def test_streams_that_ask_alike_share_their_patterns_and_limits(settings: Settings, serve: Serve) -> None:
    """Patterns and limits are immutable: the open streams of every dashboard on a pattern hold one of each."""
    app = create_app(settings)
    async with serve(app) as url, events(url, "s.>", "x.*.m"), events(url, "x.*.m", "s.>"), events(url, "s.>", rate=5):
        connections = await on_server_loop(app, open_connections(app))
    held = [pattern for connection in connections for pattern in connection.patterns]
    assert len(held) == 5 and len({id(pattern) for pattern in held}) == len(set(held)) == 2
    limits = [connection.limits for connection in connections]  # the server's own twice, and one with rate=5
    assert len({id(limit) for limit in limits}) == len(set(limits)) == 2


async def open_connections(app: FrontRoutedApp) -> list[Connection]:
    """The connections of the streams the server is serving."""
    return list(app.state.hub.connections)


async def test_a_client_that_leaves_is_logged_as_gone(settings: Settings, serve: Serve, publish: Any) -> None:
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(create_app(settings)) as url:
            async with events(url, "s.>", headers={"X-Request-ID": "leaving"}) as stream:
                await publish("s", "d", "m", [1, 2])
                await take(stream, 2)
            [closed] = await logged(logs, "stream_closed")
    assert (closed["reason"], closed["events"], closed["request_id"]) == ("client_gone", 2, "leaving")
    assert [line["event"] for line in stream_lines(logs)] == ["stream_opened", "stream_closed"]


async def test_a_refused_stream_is_logged_once_as_refused(make_settings: Callable[..., Settings], serve: Serve) -> None:
    settings = make_settings(max_connections=1)
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(create_app(settings)) as url, events(url, "a.b.c"), httpx.AsyncClient() as client:
            answer = await client.get(f"{url}/v1/stream", params={"topic": "a.*.c"}, headers={"X-Request-ID": "full"})
    assert answer.text.endswith('data: {"reason":"too_many_connections"}\n\n')
    assert [line for line in logs if line.get("request_id") == "full"] == [
        {
            "event": "stream_refused",
            "log_level": "info",
            "request_id": "full",
            "reason": "too_many_connections",
            "patterns": ["a.*.c"],
            "client": "127.0.0.1",
        }
    ]
    assert [line["event"] for line in stream_lines(logs)] == ["stream_opened", "stream_refused", "stream_closed"]


async def test_the_opened_line_says_how_the_stream_starts(settings: Settings, serve: Serve) -> None:
    starts: list[tuple[dict[str, Any], dict[str, str], dict[str, Any]]] = [
        ({}, {}, {"start": "live"}),
        ({"snapshot": "latest"}, {}, {"start": "snapshot"}),
        ({"since": "2026-01-02T03:04:05+01:00"}, {}, {"start": "since", "since": "2026-01-02T02:04:05.000000Z"}),
        (
            {"since": "2026-01-02T03:04:05Z", "snapshot": "latest"},
            {},
            {"start": "snapshot", "since": "2026-01-02T03:04:05.000000Z"},
        ),
        ({"last_event_id": 0}, {}, {"start": "resume", "resume_after": 0}),
        ({"since": "-1h"}, {"Last-Event-ID": "7"}, {"start": "resume", "resume_after": 7}),  # the browser's reconnect
    ]
    with capture_logs() as logs:
        async with serve(create_app(settings)) as url:
            for number, (params, headers, _) in enumerate(starts, start=1):
                async with events(url, "a.b.c", headers=headers, **params):
                    await logged(logs, "stream_opened", number)
    fields = ("start", "resume_after", "since")
    assert [
        {name: line[name] for name in fields if name in line} for line in logs if line["event"] == "stream_opened"
    ] == [start for _, _, start in starts]


async def test_metrics_count_starts_by_kind_and_bytes_sent(settings: Settings, serve: Serve, publish: Any) -> None:
    stored = await publish("k", "d", "x", [1, 2])
    async with serve(create_app(settings)) as url:
        before = await metric(url, "telemetry_stream_bytes_sent_total")  # process-wide: other tests' streams too
        async with events(url, "k.>") as live:
            more = await publish("k", "d", "x", [3])
            assert seqs(await take(live, 1)) == more
        async with events(url, "k.>", headers={"Last-Event-ID": str(stored[0])}) as resumed:
            assert seqs(await take(resumed, 2)) == [stored[1], *more]
        async with events(url, "k.>", since="-1h") as since:
            assert seqs(await take(since, 3)) == [*stored, *more]
        for _ in range(2):
            async with events(url, "k.>", snapshot="latest") as snapshot:
                assert seqs(await take(snapshot, 1)) == more
        for start, count in (("live", 1), ("resume", 1), ("since", 1), ("snapshot", 2)):
            assert await metric(url, f'telemetry_stream_starts_total{{start="{start}"}}') == count
        assert await metric(url, "telemetry_stream_bytes_sent_total") > before
