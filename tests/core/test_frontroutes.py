"""The services' app class: a trailing slash is a 404 in the JSON error shape, never a redirect to the Host header;
every hot route is behind the service's gate."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

from core.frontroutes import FrontRoutedApp, Guarded
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
