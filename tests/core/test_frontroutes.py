"""The services' app class: a trailing slash is a 404 in the JSON error shape, never a redirect to the Host header;
every hot route is behind the service's gate, and every answer, the hot routes' too, carries its request id; an open
stream keeps no suspended call of the layers in front of its endpoint."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI
from httpx_sse import aconnect_sse
from structlog.testing import capture_logs
from support.auth import AUDIENCE, SECRET, bearer, claims, hs256
from support.natsproc import StoppableNatsServer
from support.server import on_server_loop, suspended_chains

from core.frontroutes import FrontRoutedApp, Guarded
from core.requestids import add_request_id
from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

Serve = Callable[..., AbstractAsyncContextManager[str]]


@pytest.mark.parametrize(
    ("create_app", "method", "path"),
    [(create_ingest, "POST", "/v1/readings/"), (create_stream, "GET", "/v1/stream/?topic=a.b.c")],
    ids=["ingest", "stream"],
)
async def test_a_trailing_slash_is_404_not_a_redirect_to_the_host_header(
    create_app: Callable[[Settings], FastAPI], settings: Settings, serve: Serve, method: str, path: str
) -> None:
    async with serve(create_app(settings)) as url, httpx.AsyncClient(timeout=10.0) as client:
        response = await client.request(
            method, url + path, headers={"Host": "evil.example"}, json={"device": "d", "metric": "m", "value": 1}
        )
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])
async def test_every_hot_route_is_behind_the_gate(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    """A hot route skips FastAPI's middleware: one added without its gate would serve anyone with auth required."""
    app = create_app(make_settings(auth="required", jwt_secret="a-secret-of-at-least-32-bytes-0123456789"))
    assert isinstance(app, FrontRoutedApp) and app.front_routes
    async with serve(app) as url, httpx.AsyncClient(timeout=10.0) as client:
        answers = {
            route: (await client.request(route[0], url + route[1] + "?topic=a.b.c", json={})).status_code
            for route in app.front_routes
        }
    assert answers == dict.fromkeys(app.front_routes, 401)
    assert all(isinstance(endpoint, Guarded) for endpoint in app.front_routes.values())


@pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])
async def test_every_answer_carries_its_request_id_and_the_log_lines_of_the_request_name_it(
    create_app: Callable[[Settings], FastAPI], make_settings: Callable[..., Settings], serve: Serve
) -> None:
    """The hot routes skip FastAPI's middleware: each of them, refused or served, and any other route get an id."""
    app = create_app(make_settings(auth="required", jwt_secret="a-secret-of-at-least-32-bytes-0123456789"))
    assert isinstance(app, FrontRoutedApp)
    routes = [*app.front_routes, ("GET", "/healthz"), ("GET", "/no-such-path")]
    async with serve(app) as url, httpx.AsyncClient(timeout=10.0) as client:

        async def ids(method: str, path: str, given: str | None) -> str:
            headers = {} if given is None else {"X-Request-ID": given}
            answer = await client.request(method, url + path + "?topic=a.b.c", json={}, headers=headers)
            return answer.headers["x-request-id"]

        kept = {route: await ids(*route, "lb-7f3a.42:1") for route in routes}
        made = [await ids(*route, None) for route in routes for _ in range(2)]
        replaced = {route: await ids(*route, "two words\tand a tab" + "x" * 200) for route in routes}
    assert kept == dict.fromkeys(routes, "lb-7f3a.42:1")  # a proxy's or device's own id ties both logs together
    assert len(set(made)) == len(made) and all(re.fullmatch("[0-9a-f]{16}", made_id) for made_id in made)
    assert all(re.fullmatch("[0-9a-f]{16}", new_id) for new_id in replaced.values())  # no text of the client's


async def test_a_log_line_written_while_serving_a_request_names_its_id(
    make_settings: Callable[..., Settings], serve: Serve, own_nats: StoppableNatsServer
) -> None:
    """A publish JetStream does not acknowledge is logged inside the request (readings_not_stored): its line names
    the request's id."""
    settings = make_settings(nats_urls=[own_nats.url], publish_timeout_s=1.0)
    with capture_logs(processors=[add_request_id]) as logs:
        async with serve(create_ingest(settings)) as url, httpx.AsyncClient(timeout=30.0) as client:
            own_nats.pause()
            try:
                answer = await client.post(
                    f"{url}/v1/readings",
                    json={"device": "d", "metric": "m", "value": 1},
                    headers={"X-Request-ID": "device-42-req-9"},
                )
            finally:
                own_nats.resume()
    assert answer.status_code == 503 and answer.headers["x-request-id"] == "device-42-req-9"
    assert [line.get("request_id") for line in logs if line["event"] == "readings_not_stored"] == ["device-42-req-9"]


async def test_uvicorn_awaits_an_open_stream_with_no_call_of_the_layers_in_front_of_it_suspended(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    """The forwarded headers, the request id, CORS and the gate do their work at once and hand uvicorn the stream's own
    coroutine: a suspended call of each would be held for the hours a stream is open, for every open stream."""
    page = "https://dashboard.example"
    app = create_stream(make_settings(auth="required", jwt_secret=SECRET, jwt_audience=AUDIENCE, cors_origins=[page]))
    headers = {
        **bearer(hs256(claims(subscribe=("a.>",)))),
        "Origin": page,
        "X-Request-ID": "dash-1",
        "X-Forwarded-For": "203.0.113.7",
    }
    with capture_logs(processors=[add_request_id]) as logs:
        async with (
            serve(app) as url,
            httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client,
            aconnect_sse(client, "GET", f"{url}/v1/stream", params={"topic": "a.b.c"}, headers=headers) as source,
        ):
            # The stream's task ran from its start to its wait for the client in one step, the one that sent this.
            answer = source.response
            chains = await on_server_loop(app, suspended_chains())
    # uvicorn's own coroutine awaits the stream endpoint's, with nothing between.
    served = [chain for chain in chains if chain[:1] == ["RequestResponseCycle.run_asgi"]]
    callers = [(chain[0], chain[1].split(".")[0]) for chain in served]
    assert callers == [("RequestResponseCycle.run_asgi", "EventStream")]
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "dash-1"
    assert answer.headers["access-control-allow-origin"] == page
    [opened] = [line for line in logs if line["event"] == "stream_opened"]
    assert (opened["client"], opened["request_id"]) == ("203.0.113.7", "dash-1")
