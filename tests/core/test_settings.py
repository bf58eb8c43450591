"""Settings come from TELEMETRY_* variables and refuse impossible combinations with a clear message."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.settings import Settings


def test_environment_variables_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_NATS_URLS", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("TELEMETRY_KEEPALIVE_S", "2.5")
    monkeypatch.setenv("TELEMETRY_STREAM_STORAGE", "memory")
    settings = Settings()
    assert settings.nats_urls == ["nats://a:4222", "nats://b:4222"]
    assert settings.keepalive_s == 2.5
    assert settings.stream_storage == "memory"


def test_duplicate_window_may_not_exceed_max_age() -> None:
    with pytest.raises(ValidationError, match="stream_duplicate_window_s must not exceed stream_max_age_s"):
        Settings(stream_max_age_s=60, stream_duplicate_window_s=120)


def test_stream_name_is_one_token() -> None:
    with pytest.raises(ValidationError, match="stream_name"):
        Settings(stream_name="a.b")


@pytest.mark.parametrize("url", ["tls://nats:4222", "ws://nats:8080"])
def test_a_nats_url_the_services_cannot_use_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValidationError, match="only nats:// URLs are supported"):
        Settings(nats_urls=[url])
