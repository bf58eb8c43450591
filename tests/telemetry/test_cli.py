"""The command line: every setting is a flag of the same name, a flag beats the environment, bad values exit 2,
and every command ends quietly when its reader goes away or on Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.auth import new_key, public_pem
from support.net import free_port
from support.pipes import buffered_env, piped

from core.settings import Settings, env_only
from telemetry.cli import BROKEN_PIPE_EXIT, build_parser, build_settings, env_of, flag_of, main


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
        if env_only(name):  # a secret or the file of one: never a flag (tests/telemetry/test_token.py)
            assert f"{flag_of(name)} " not in help_text
            continue
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


def test_output_into_a_pipe_nobody_reads_exits_141_quietly() -> None:
    """The help of ``tail`` is still buffered when argparse is done: writing it out must fail in ``main``,
    not in the interpreter's last flush (which prints "Exception ignored" and exits 120)."""
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader is gone before the command writes anything
    try:
        finished = subprocess.run(
            [sys.executable, "-m", "telemetry", "tail", "--help"],
            stdout=write_fd,
            stderr=subprocess.PIPE,
            env=buffered_env(),
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_fd)

    assert (finished.returncode, finished.stderr) == (BROKEN_PIPE_EXIT, "")


async def test_simulate_stops_when_its_reader_goes_away() -> None:
    """Its reports are its only output: once nobody reads them, posting on would be unseen work."""
    command = [sys.executable, "-m", "telemetry", "simulate", "--url", f"http://127.0.0.1:{free_port()}"]
    async with piped(*command, "--devices", "1", "--report-s", "0.1") as simulate:
        assert (await simulate.line()).startswith("simulate: 1 devices")
        simulate.close_stdout()
        assert await simulate.finish() == (BROKEN_PIPE_EXIT, "")


# Holds the tail command in its import of telemetry.tail until stdin has a line: a Ctrl-C lands there for sure.
# SIGINT is handled as Python does when started from a terminal, whatever this test inherited: a job started with
# ``&`` by a script ignores SIGINT, and Python then leaves it ignored.
STOPPED_IN_AN_IMPORT = """
import signal
import sys
from telemetry.cli import main

signal.signal(signal.SIGINT, signal.default_int_handler)

def hold(event, args):
    if event == "import" and args[0] == "telemetry.tail":
        print("importing telemetry.tail", flush=True)
        sys.stdin.readline()

sys.addaudithook(hold)
sys.exit(main(sys.argv[1:]))
"""


async def test_ctrl_c_before_the_event_loop_runs_exits_quietly() -> None:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", STOPPED_IN_AN_IMPORT, "tail", ">", "--url", f"http://127.0.0.1:{free_port()}"],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(60):
            assert await process.stdout.readline() == b"importing telemetry.tail\n"  # type: ignore[union-attr]
            process.send_signal(signal.SIGINT)
            _, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert (process.returncode, stderr.decode()) == (0, "")


def test_run_simulate_with_only_public_keys_asks_for_a_token_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    keys = tmp_path / "public.pem"
    keys.write_text(public_pem(new_key("ES256")))
    monkeypatch.setenv("TELEMETRY_AUTH", "required")
    monkeypatch.setenv("TELEMETRY_JWT_PUBLIC_KEYS_FILE", str(keys))
    monkeypatch.delenv("TELEMETRY_TOKEN", raising=False)

    with pytest.raises(SystemExit) as exited:
        main(["run", "--simulate", "2"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert "TELEMETRY_TOKEN" in error
    assert "TELEMETRY_JWT_SECRET" in error


def test_tail_takes_a_start_id_or_a_history_length_not_both(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tail", ">", "--last-event-id", "3", "--since-s", "60"])

    assert exited.value.code == 2
    assert "--since-s: not allowed with argument --last-event-id" in capsys.readouterr().err
