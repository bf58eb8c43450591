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


@pytest.mark.parametrize("url", ["ws://nats:8080", "wss://user:s3cret@nats:443"])
def test_a_nats_url_the_services_cannot_use_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValidationError, match="only nats:// and tls:// URLs are supported") as refused:
        Settings(nats_urls=[url])
    assert "s3cret" not in refused.value.errors()[0]["msg"]  # the message names the URL without its password


def test_tls_urls_are_accepted() -> None:
    assert Settings(nats_urls="tls://nats:4222,nats://other:4222").nats_urls == ["tls://nats:4222", "nats://other:4222"]


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"nats_tls_cert_file": "client.pem"}, "nats_tls_cert_file and nats_tls_key_file go together"),
        ({"nats_tls_key_file": "client-key.pem"}, "nats_tls_cert_file and nats_tls_key_file go together"),
        ({"nats_nkey_seed_file": "user.nk", "nats_creds_file": "user.creds"}, "not both"),
    ],
)
def test_nats_credential_files_that_cannot_go_together_are_refused(files: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(**files)


WHOLE_SECONDS = ["nats_connect_timeout_s", "shutdown_grace_s"]


@pytest.mark.parametrize("name", WHOLE_SECONDS)
@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("2.5", "Input should be a valid integer, unable to parse string as an integer"),
        ("0", "Input should be greater than or equal to 1"),
    ],
)
def test_whole_second_settings_refuse_a_fraction_naming_the_setting(
    name: str, value: str, complaint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nats-py and uvicorn take whole seconds: 2.5 is refused, not rounded to something the user did not write."""
    monkeypatch.setenv(f"TELEMETRY_{name.upper()}", value)
    with pytest.raises(ValidationError) as refused:
        Settings()
    assert [(error["loc"], error["msg"]) for error in refused.value.errors()] == [((name,), complaint)]


@pytest.mark.parametrize("name", WHOLE_SECONDS)
def test_whole_second_settings_are_integers(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(f"TELEMETRY_{name.upper()}", "3")
    assert getattr(Settings(), name) == 3
    assert Settings.model_fields[name].annotation is int
