"""The API documentation can be turned off (the chart does): its routes are then not there at all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from support.sse import Serve

from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

DOCS = ("/docs", "/redoc", "/openapi.json")


@pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])
async def test_the_documentation_is_served_unless_turned_off(
    make_settings: Callable[..., Settings], serve: Serve, create_app: Callable[[Settings], Any]
) -> None:
    statuses = {}
    for docs in (True, False):
        async with serve(create_app(make_settings(docs=docs))) as url, httpx.AsyncClient() as client:
            statuses[docs] = [(await client.get(f"{url}{path}")).status_code for path in DOCS]
    assert statuses == {True: [200, 200, 200], False: [404, 404, 404]}
