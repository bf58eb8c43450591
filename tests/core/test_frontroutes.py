"""The services' app class: a trailing slash is a 404 in the JSON error shape, never a redirect to the Host header."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from fastapi import FastAPI

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
