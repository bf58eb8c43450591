"""``telemetry token`` and ``telemetry keys create``: credentials the services accept, secrets never on a command
line or echoed back."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
from support.auth import AUDIENCE, SECRET

from core.apikeys import ApiKeys
from core.auth import Authenticator
from core.settings import Settings
from core.topics import Pattern
from telemetry.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, str, str]:
    """The exit code, stdout and stderr of ``telemetry argv``."""
    try:
        code: int | str | None = main(list(argv))
    except SystemExit as exited:
        code = exited.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_token_prints_a_token_the_services_accept(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEMETRY_JWT_SECRET", SECRET)
    monkeypatch.setenv("TELEMETRY_JWT_AUDIENCE", AUDIENCE)
    code, out, _ = run(capsys, "token", "--subscribe", "plant1.>", "--publish", "plant1.boiler-7.>", "--ttl-s", "60")
    assert code == 0
    token = out.strip()
    grant = Authenticator(Settings(auth="required")).grant(token)
    assert (grant.subscribe, grant.publish) == ((Pattern.parse("plant1.>"),), (Pattern.parse("plant1.boiler-7.>"),))
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE)
    assert 50 <= claims["exp"] - time.time() <= 60


def test_token_signs_with_the_secret_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text(SECRET + "\n")  # as `echo` writes it: the newline is not part of the secret
    monkeypatch.setenv("TELEMETRY_JWT_SECRET_FILE", str(tmp_path / "secret"))
    code, out, _ = run(capsys, "token", "--subscribe", ">")
    assert code == 0
    assert jwt.decode(out.strip(), SECRET, algorithms=["HS256"])["telemetry"] == {"publish": [], "subscribe": [">"]}


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (
            ["token", "--subscribe", ">"],
            "no secret to sign with: set TELEMETRY_JWT_SECRET or TELEMETRY_JWT_SECRET_FILE",
        ),
        (["token", "--ttl-s", "60"], "give the patterns the token grants"),
        (["token", "--subscribe", "plant1.a.b.c"], "argument --subscribe: 'plant1.a.b.c' has 4 tokens"),
        (["keys", "create"], "the following arguments are required: --publish"),
        (["keys", "delete", "--publish", ">"], "invalid choice: 'delete'"),
    ],
)
def test_a_command_that_cannot_work_exits_2_saying_why(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert complaint in err


def test_keys_create_prints_the_key_once_and_the_line_for_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "keys", "create", "--publish", "plant1.boiler-7.>", "--publish", "plant2.>")
    assert code == 0
    key, line = out.splitlines()
    assert key.startswith("tk_") and key not in line
    (tmp_path / "keys").write_text(line + "\n")
    expected = (Pattern.parse("plant1.boiler-7.>"), Pattern.parse("plant2.>"))
    assert ApiKeys(tmp_path / "keys").publish_patterns(key) == expected
    assert "shown this once" in err and key not in err
    _, again, _ = run(capsys, "keys", "create", "--publish", ">")
    assert again.splitlines()[0] != key


@pytest.mark.parametrize("command", ["run", "ingest", "stream"])
def test_secrets_are_no_flags_and_are_never_echoed(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, help_text, _ = run(capsys, command, "--help")
    assert [flag for flag in ("--jwt-secret", "--api-keys-file", "--jwt-public-keys-file") if flag in help_text] == []
    assert "--auth " in help_text and "--jwt-audience" in help_text
    monkeypatch.setenv("TELEMETRY_JWT_SECRET", "short-and-secret")
    code, _, err = run(capsys, command)
    assert code == 2
    assert "TELEMETRY_JWT_SECRET" in err and "short-and-secret" not in err


@pytest.mark.parametrize("command", ["ingest", "stream"])
def test_a_service_whose_key_file_cannot_be_read_does_not_start_and_says_why(command: str, tmp_path: Path) -> None:
    missing = tmp_path / "api-keys"
    env = {**os.environ, "TELEMETRY_AUTH": "required", "TELEMETRY_API_KEYS_FILE": str(missing)}
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", command, "--ingest-port", "0", "--stream-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"telemetry: error: {missing}: No such file or directory"
