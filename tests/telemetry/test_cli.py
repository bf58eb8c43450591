"""The command line: every setting is a flag of the same name, a flag beats the environment, bad values exit 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from core.settings import Settings
from telemetry.cli import build_parser, build_settings, env_of, flag_of, main


def settings_for(*argv: str) -> Settings:
    args = build_parser().parse_args(argv)
    return build_settings(args, args.parser)


@pytest.mark.parametrize("command", ["run", "ingest", "stream"])
def test_every_setting_is_a_flag_with_its_description(
    command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "10000")  # no wrapping, so descriptions can be found whole
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for name, field in Settings.model_fields.items():
        assert flag_of(name) in help_text
        assert env_of(name) in help_text
        assert f"{field.description} [{env_of(name)}, default " in help_text


def test_names_follow_one_rule() -> None:
    assert flag_of("keepalive_s") == "--keepalive-s"
    assert env_of("keepalive_s") == "TELEMETRY_KEEPALIVE_S"


def test_a_flag_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TELEMETRY_KEEPALIVE_S", "30")
    monkeypatch.setenv("TELEMETRY_RETRY_MS", "700")

    settings = settings_for("stream", "--keepalive-s", "5")

    assert settings.keepalive_s == 5.0
    assert settings.retry_ms == 700


def test_flags_are_validated_like_environment_values() -> None:
    settings = settings_for(
        "run", "--nats-urls", "nats://a:4222, nats://b:4222", "--stream-storage", "memory", "--log-level", "debug"
    )

    assert settings.nats_urls == ["nats://a:4222", "nats://b:4222"]
    assert settings.stream_storage.value == "memory"
    assert settings.log_level == "debug"


def test_an_invalid_flag_exits_2_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["ingest", "--ingest-port", "70000"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1
    assert error.startswith("telemetry ingest: error: invalid settings: --ingest-port '70000'")
    assert "65535" in error


def test_an_invalid_environment_value_names_the_variable_and_the_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TELEMETRY_RETRY_MS", "soon")

    with pytest.raises(SystemExit) as exited:
        main(["stream"])

    assert exited.value.code == 2
    assert "TELEMETRY_RETRY_MS='soon' (flag --retry-ms)" in capsys.readouterr().err


def test_a_contradiction_between_settings_names_both_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--stream-max-age-s", "60", "--stream-duplicate-window-s", "120"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "--stream-max-age-s" in error
    assert "--stream-duplicate-window-s" in error


def test_a_bad_tail_pattern_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", "site..temperature"])

    assert exited.value.code == 2
    assert "token 2 of 'site..temperature'" in capsys.readouterr().err


def test_python_dash_m_telemetry_is_the_command() -> None:
    """What ``telemetry run`` starts its children with."""
    finished = subprocess.run(
        [sys.executable, "-m", "telemetry", "stream", "--retry-ms", "-1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert finished.returncode == 2
    assert finished.stderr.strip().splitlines() == [
        "telemetry stream: error: invalid settings: --retry-ms '-1': Input should be greater than or equal to 0"
    ]
