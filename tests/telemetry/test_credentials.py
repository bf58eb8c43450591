"""What the telemetry command's own clients (tail, simulate) send to services that require auth: a token minted
from the services' secret for just what they do, renewed in time, or TELEMETRY_TOKEN as given (the commands
against real services: tests/telemetry/test_tail.py and test_simulate.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from support.auth import SECRET

from core.auth import Authenticator, mint_token
from core.settings import Settings
from core.topics import Pattern
from telemetry import credentials
from telemetry.credentials import RENEW_AT, TOKEN_TTL_S, CommandAuth

LAB = Pattern.parse("lab.>")


def sent_token(auth: CommandAuth) -> str | None:
    """The bearer token a request through ``auth`` carries, if any."""
    request = next(auth.auth_flow(httpx.Request("GET", "http://service/")))
    header = request.headers.get("Authorization")
    return None if header is None else header.removeprefix("Bearer ")


def test_a_minted_token_grants_just_the_commands_patterns_and_is_renewed_at_half_its_life(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    minted: list[str] = []

    def mint(*args: Any, **kwargs: Any) -> str:
        minted.append(mint_token(*args, **kwargs))
        return minted[-1]

    monkeypatch.setattr(credentials, "mint_token", mint)
    now = [1_000_000.0]
    auth = CommandAuth(None, SECRET.encode(), subscribe=[LAB], clock=lambda: now[0])
    first = sent_token(auth)
    assert first is not None
    grant = Authenticator(Settings(auth="required", jwt_secret=SECRET)).grant(first)
    assert grant.may_subscribe(LAB) and not grant.may_subscribe(Pattern.parse(">"))
    assert not grant.may_publish("lab.probe-1.temperature")
    now[0] += TOKEN_TTL_S * RENEW_AT - 1
    assert sent_token(auth) == first
    assert len(minted) == 1
    now[0] += 1
    sent_token(auth)
    assert len(minted) == 2  # half its life gone: the next request carries a new one


def test_a_given_token_wins_and_without_one_or_a_secret_nothing_is_sent() -> None:
    assert sent_token(CommandAuth("given.token", SECRET.encode(), subscribe=[LAB])) == "given.token"
    assert sent_token(CommandAuth(None, None, subscribe=[LAB])) is None


def test_a_command_has_credentials_from_the_token_or_the_secret_and_not_from_public_keys_alone(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(credentials.TOKEN_ENV, raising=False)
    public_only = Settings(auth="required", jwt_public_keys_file=tmp_path / "keys.pem")
    assert not credentials.has_credentials(public_only)
    assert credentials.has_credentials(Settings(auth="required", jwt_secret=SECRET))
    monkeypatch.setenv(credentials.TOKEN_ENV, "a.token.given")
    assert credentials.has_credentials(public_only)
