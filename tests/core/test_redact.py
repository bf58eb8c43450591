"""Credentials in NATS URLs never reach a log line or an error message."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from structlog.testing import capture_logs
from support.net import free_port
from support.sse import Serve

from core.redact import redact_url
from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream
from telemetry.cli import main

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://dash:s3cret@127.0.0.1:4222", "nats://dash:***@127.0.0.1:4222"),
        ("nats://s3cret@nats.example:4222", "nats://***@nats.example:4222"),
        ("tls://dash:s3cret@[::1]:4222", "tls://dash:***@[::1]:4222"),
        ("dash:s3cret@nats.example", "dash:***@nats.example"),
        ("nats://nats.example:4222", "nats://nats.example:4222"),
        ("nats://dash:s3cret@host:port", "nats://***"),  # unparsable: hidden past the scheme
    ],
)
def test_a_url_is_shown_without_its_password_or_token(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_a_refused_url_is_echoed_without_its_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--nats-urls", f"ws://dash:{SECRET}@nats.example:4222"])
    flag_error = capsys.readouterr().err
    monkeypatch.setenv("TELEMETRY_NATS_URLS", f"ws://dash:{SECRET}@nats.example:4222,nats://{SECRET}@other:4222")
    with pytest.raises(SystemExit):
        main(["stream"])
    env_error = capsys.readouterr().err
    assert "ws://dash:***@nats.example:4222" in flag_error
    assert "nats://***@other:4222" in env_error
    assert SECRET not in flag_error + env_error


@pytest.mark.parametrize("create_app", [create_ingest, create_stream], ids=["ingest", "stream"])
async def test_the_services_log_no_nats_credentials(
    make_settings: Callable[..., Settings], serve: Serve, create_app: Callable[[Settings], Any]
) -> None:
    # The test's nats-server has no authorization: it accepts the credentials and ignores them. The first URL
    # has nobody listening, so a failed connection is logged too.
    settings = make_settings()
    host_port = settings.nats_urls[0].removeprefix("nats://")
    nobody = f"nats://dash:{SECRET}@127.0.0.1:{free_port()}"
    settings = settings.model_copy(update={"nats_urls": [nobody, f"nats://dash:{SECRET}@{host_port}"]})
    with capture_logs() as logs:
        async with serve(create_app(settings)):
            pass
    assert any(entry["event"] == "nats_connected" for entry in logs)
    assert SECRET not in repr(logs)
