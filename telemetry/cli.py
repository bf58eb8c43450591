"""The ``telemetry`` command: argument parsing, and every Settings field as a flag of the same name."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys
import typing
from collections.abc import Callable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from core.redact import HIDDEN, redact_urls
from core.settings import ENV_PREFIX, Settings, env_only
from core.topics import InvalidPattern, Pattern

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

PROG = "telemetry"
USAGE_ERROR = 2
BROKEN_PIPE_EXIT = 128 + signal.SIGPIPE
DEFAULT_INGEST_URL = f"http://127.0.0.1:{Settings.model_fields['ingest_port'].default}"
DEFAULT_STREAM_URL = f"http://127.0.0.1:{Settings.model_fields['stream_port'].default}"
URL_FIELDS = {"nats_urls"}  # settings whose values may hold credentials: echoed redacted

Handler = Callable[[argparse.Namespace, argparse.ArgumentParser], int]


def flag_of(field: str) -> str:
    """The flag of a settings field: ``keepalive_s`` is ``--keepalive-s``."""
    return "--" + field.replace("_", "-")


def env_of(field: str) -> str:
    """The environment variable of a settings field: ``keepalive_s`` is ``TELEMETRY_KEEPALIVE_S``."""
    return ENV_PREFIX + field.upper()


def shown(value: Any) -> str:
    """A default as ``--help`` shows it, and the README's configuration table."""
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def _choices(annotation: Any) -> list[str] | None:
    """The fixed values of a Literal or Enum field, for the help text (pydantic still does the checking)."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(value) for value in typing.get_args(annotation)]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return [str(member.value) for member in annotation]
    return None


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per Settings field, generated so that a new field is a new flag without more code."""
    group = parser.add_argument_group(
        "settings", f"each flag is also an environment variable ({ENV_PREFIX}<NAME>); a flag given wins"
    )
    for name, field in Settings.model_fields.items():
        if env_only(name):  # a secret, or the file of one: never on a command line
            continue
        choices = _choices(field.annotation)
        group.add_argument(
            flag_of(name),
            dest=name,
            metavar="{" + ",".join(choices) + "}" if choices else name.upper(),
            default=argparse.SUPPRESS,
            help=f"{field.description or ''} [{env_of(name)}, default {shown(field.default)}]".replace("%", "%%"),
        )


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as flags, as the strings typed: pydantic validates them like environment values."""
    return {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}


def echoed(field: str, value: Any) -> Any:
    """A setting's value as an error message may echo it: NATS URLs without their credentials, no secret at all."""
    if env_only(field):
        return HIDDEN
    if field not in URL_FIELDS:
        return value
    if isinstance(value, str):
        return ",".join(redact_urls(value.split(",")))
    return redact_urls(value) if isinstance(value, list) else HIDDEN


def explain(error: ValidationError, given: dict[str, Any]) -> str:
    """One line naming each bad setting as the user wrote it: the flag, or else the environment variable."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        field = str(item["loc"][0]) if item["loc"] else None
        if field in given:
            problems.append(f"{flag_of(field)} {echoed(field, given[field])!r}: {message}")
        elif field in Settings.model_fields:
            flag = "" if env_only(field) else f" (flag {flag_of(field)})"
            problems.append(f"{env_of(field)}={echoed(field, item['input'])!r}{flag}: {message}")
        else:
            mentioned = [
                env_of(name) if env_only(name) else flag_of(name)
                for name in Settings.model_fields
                if re.search(rf"\b{name}\b", message)
            ]
            problems.append(f"{message} ({', '.join(mentioned)})" if mentioned else message)
    return "invalid settings: " + "; ".join(problems)


def build_settings(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Settings:
    """The environment overridden by the flags given; exits 2 with a one-line message when invalid."""
    given: dict[str, Any] = given_settings(args)
    try:
        return Settings(**given)
    except ValidationError as err:
        parser.exit(USAGE_ERROR, f"{parser.prog}: error: {explain(err, given)}\n")
    except SettingsError as err:
        parser.exit(USAGE_ERROR, f"{parser.prog}: error: invalid settings: {err}\n")


def _bounded(
    kind: Callable[[str], float], low: float, high: float | None = None, *, open_low: bool = False
) -> Callable[[str], float]:
    """An argparse type: the number, or argparse's own error message when out of range."""

    def parse(text: str) -> float:
        value = kind(text)
        if value < low or (open_low and value == low):
            raise argparse.ArgumentTypeError(f"{text} is not {'more than' if open_low else 'at least'} {low:g}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text} is more than {high:g}")
        return value

    parse.__name__ = getattr(kind, "__name__", "number")
    return parse


positive_float = _bounded(float, 0, open_low=True)
positive_int = _bounded(int, 1)
non_negative_int = _bounded(int, 0)
port = _bounded(int, 1, 65535)
history_seconds = _bounded(float, 0, 999_999_999, open_low=True)  # the stream's since= takes up to 9 digits


# The commands import what they need when they run: ``tail`` should not wait for FastAPI and uvicorn to load.


def _serve(settings: Settings, create_app: Callable[[Settings], FastAPI], host: str, port: int) -> int:
    from core.logs import configure_logging
    from core.serve import serve
    from core.watched import UnusableFile

    configure_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except UnusableFile as err:  # a key file: one line that names it and says why, not a traceback
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    serve(app, settings, host, port)
    return 0


def _serve_ingest(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings = build_settings(args, parser)
    from ingest.app import create_app

    return _serve(settings, create_app, settings.ingest_host, settings.ingest_port)


def _serve_stream(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    settings = build_settings(args, parser)
    from stream.app import create_app

    return _serve(settings, create_app, settings.stream_host, settings.stream_port)


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from telemetry.supervisor import RunOptions, Supervisor

    settings = build_settings(args, parser)
    if args.simulate and settings.auth == "required":
        _check_simulator_credentials(settings, parser)
    options = RunOptions(
        data_dir=Path(args.data_dir),
        nats_port=args.nats_port,
        nats_monitor_port=args.nats_monitor_port,
        simulate=args.simulate,
        rate=args.rate,
    )
    return Supervisor(settings, given_settings(args), options).run()


def _check_simulator_credentials(settings: Settings, parser: argparse.ArgumentParser) -> None:
    """With auth required and only public keys, nothing here can mint the simulated devices' token: say so now,
    rather than start devices whose every reading is refused."""
    from core.watched import UnusableFile
    from telemetry.credentials import TOKEN_ENV, has_credentials

    try:
        usable = has_credentials(settings)
    except UnusableFile as err:
        parser.error(str(err))
    if not usable:
        parser.error(
            f"--simulate with {ENV_PREFIX}AUTH=required needs a token for the simulated devices: set {TOKEN_ENV} "
            f"(one that may publish '>'), or {ENV_PREFIX}JWT_SECRET or {ENV_PREFIX}JWT_SECRET_FILE to mint one"
        )


def command_auth(
    parser: argparse.ArgumentParser, *, publish: Sequence[Pattern] = (), subscribe: Sequence[Pattern] = ()
) -> httpx.Auth:
    """What ``tail`` and ``simulate`` send to services that require auth (telemetry/credentials.py)."""
    from core.watched import UnusableFile
    from telemetry.credentials import CommandAuth

    try:
        return CommandAuth.from_environment(publish=publish, subscribe=subscribe)
    except ValidationError as err:
        parser.exit(USAGE_ERROR, f"{parser.prog}: error: {explain(err, {})}\n")
    except UnusableFile as err:
        parser.error(str(err))


def _simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from telemetry.simulate import SimulationConfig, main

    config = SimulationConfig(
        url=args.url,
        devices=args.devices,
        rate=args.rate,
        sites=args.sites,
        batch=args.batch,
        duration_s=args.duration_s,
        report_s=args.report_s,
        auth=command_auth(parser, publish=[Pattern.parse(">")]),
    )
    return asyncio.run(main(config))


def _tail(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from telemetry.tail import TailOptions, main

    patterns = []
    for text in args.patterns:
        try:
            patterns.append(Pattern.parse(text))
        except InvalidPattern as err:
            parser.error(str(err))
    options = TailOptions(
        url=args.url,
        patterns=tuple(args.patterns),
        last_event_id=None if args.last_event_id is None else str(args.last_event_id),
        snapshot=args.snapshot,
        since_s=args.since_s,
        raw=args.raw,
        idle_timeout_s=args.idle_timeout_s,
        auth=command_auth(parser, subscribe=patterns),
    )
    return asyncio.run(main(options))


def _token(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from core.auth import mint_token
    from core.jwtkeys import hs256_secret
    from core.watched import UnusableFile

    settings = build_settings(args, parser)
    if not args.publish and not args.subscribe:
        parser.error("give the patterns the token grants: --subscribe and/or --publish")
    try:
        secret = hs256_secret(settings)
    except UnusableFile as err:
        parser.error(str(err))
    if secret is None:
        parser.error(f"no secret to sign with: set {env_of('jwt_secret')} or {env_of('jwt_secret_file')}")
    token = mint_token(
        secret,
        publish=args.publish or (),
        subscribe=args.subscribe or (),
        ttl_s=args.ttl_s,
        audience=settings.jwt_audience,
        issuer=settings.jwt_issuer,
    )
    print(token)
    return 0


def _keys(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from core.apikeys import create_key, key_line

    key = create_key()
    print(key)
    print(key_line(key, args.publish))
    print(
        f"{PROG} keys: the key (first line) is shown this once: give it to the device. Add the second line to the "
        f"file of {env_of('api_keys_file')}; removing it revokes the key.",
        file=sys.stderr,
    )
    return 0


def topic_pattern(text: str) -> Pattern:
    """An argparse type: a topic pattern, or argparse's own error message saying what is wrong with it."""
    try:
        return Pattern.parse(text)
    except InvalidPattern as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; each subcommand's function is its ``handler`` default."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Sensor telemetry: devices POST readings, dashboards follow them as Server-Sent Events."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run nats-server, both services and optionally simulated devices; Ctrl-C stops everything",
        description="Start a local nats-server with JetStream, the ingest and stream services and (with --simulate) "
        "simulated devices, each as a child process; Ctrl-C stops them in order, a second Ctrl-C at once.",
    )
    run.add_argument("--simulate", type=non_negative_int, default=0, metavar="N", help="simulated devices (default 0)")
    run.add_argument("--rate", type=positive_float, default=1.0, metavar="R", help="readings/s per device (default 1)")
    run.add_argument("--nats-port", type=port, default=4222, metavar="P", help="NATS client port (default 4222)")
    run.add_argument("--nats-monitor-port", type=port, default=8222, metavar="P", help="NATS monitoring port (8222)")
    run.add_argument(
        "--data-dir", default=".telemetry", metavar="DIR", help="JetStream store and nats log (default .telemetry)"
    )
    add_settings_flags(run)
    run.set_defaults(handler=_run, parser=run)

    for name, handler, what in (
        ("ingest", _serve_ingest, "the ingest service: devices POST readings, published to JetStream"),
        ("stream", _serve_stream, "the stream service: readings from JetStream as Server-Sent Events"),
    ):
        service = commands.add_parser(name, help=f"run {what} (one process, e.g. in a container)")
        add_settings_flags(service)
        service.set_defaults(handler=handler, parser=service)

    simulate = commands.add_parser(
        "simulate",
        help="simulated devices posting readings to an ingest service",
        description="Each device posts readings with ids <device>-<run>-<counter>; failed posts are retried with "
        "the same ids, so the ingest service stores each reading once.",
    )
    simulate.add_argument("--devices", type=positive_int, default=5, metavar="N", help="devices (default 5)")
    simulate.add_argument("--rate", type=positive_float, default=1.0, metavar="R", help="readings/s per device (1)")
    simulate.add_argument("--url", default=DEFAULT_INGEST_URL, help=f"ingest service (default {DEFAULT_INGEST_URL})")
    simulate.add_argument("--sites", type=positive_int, default=1, metavar="S", help="sites to spread devices over (1)")
    simulate.add_argument("--batch", type=positive_int, default=1, metavar="B", help="readings per request (1)")
    simulate.add_argument("--duration-s", type=positive_float, default=None, metavar="D", help="stop after D seconds")
    simulate.add_argument("--report-s", type=positive_float, default=5.0, metavar="S", help="summary interval (5)")
    simulate.set_defaults(handler=_simulate, parser=simulate)

    tail = commands.add_parser(
        "tail",
        help="print the readings of a stream as they arrive, resuming after every drop",
        description="Follow topics such as 'site1.*.temperature' or '>' (everything); after a dropped connection "
        "reconnect after the server's retry hint with Last-Event-ID, so nothing is missed.",
    )
    tail.add_argument("patterns", nargs="+", metavar="PATTERN", help="topic pattern: site.device.metric, *, final >")
    tail.add_argument("--url", default=DEFAULT_STREAM_URL, help=f"stream service (default {DEFAULT_STREAM_URL})")
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--last-event-id", type=non_negative_int, default=None, metavar="N", help="start after this id (0: all stored)"
    )
    start.add_argument(
        "--since-s",
        type=history_seconds,
        default=None,
        metavar="S",
        help="start with the readings stored in the last S seconds",
    )
    tail.add_argument(
        "--snapshot",
        action="store_true",
        help="start with the latest reading of every matching topic (before --since-s when given)",
    )
    tail.add_argument("--raw", action="store_true", help="print each reading's JSON data as it arrives")
    tail.add_argument(
        "--idle-timeout-s", type=positive_float, default=60.0, metavar="S", help="reconnect after S s of silence (60)"
    )
    tail.set_defaults(handler=_tail, parser=tail)

    token = commands.add_parser(
        "token",
        help="print an HS256 token signed with the configured secret, for trying things out",
        description=f"Mint a JWT granting topic patterns, signed with {env_of('jwt_secret')} (or the file of "
        f"{env_of('jwt_secret_file')}), with {env_of('jwt_audience')} and {env_of('jwt_issuer')} when set.",
    )
    token.add_argument(
        "--subscribe", type=topic_pattern, action="append", metavar="PATTERN", help="may follow (repeatable)"
    )
    token.add_argument(
        "--publish", type=topic_pattern, action="append", metavar="PATTERN", help="may post to (repeatable)"
    )
    token.add_argument("--ttl-s", type=positive_float, default=3600.0, metavar="S", help="valid for S seconds (3600)")
    token.set_defaults(handler=_token, parser=token)

    keys = commands.add_parser(
        "keys",
        help="create a device API key: prints the key once, and the line for the keys file",
        description=f"Create a random API key bound to publish patterns; the keys file ({env_of('api_keys_file')}) "
        "holds only its SHA-256.",
    )
    keys.add_argument("action", choices=["create"], help="create a key")
    keys.add_argument(
        "--publish",
        type=topic_pattern,
        action="append",
        required=True,
        metavar="PATTERN",
        help="topic pattern the key may post to (repeatable)",
    )
    keys.set_defaults(handler=_keys, parser=keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``telemetry`` console script; returns the exit code.

    Like any command line tool it ends quietly on Ctrl-C, whenever it comes: 0, as ``tail``, ``simulate`` and
    ``run`` return when Ctrl-C stops them (before their event loop runs, and once uvicorn has drained a service,
    it arrives here as KeyboardInterrupt). And when the reader of its output goes away (``| head``): 141, what a
    shell reports for a process killed by SIGPIPE, which Python ignores (the write fails with BrokenPipeError).
    """
    try:
        try:
            args = build_parser().parse_args(argv)
            handler: Handler = args.handler
            # The subcommand's own parser, so errors start with "telemetry run:" as argparse's own do.
            subparser: argparse.ArgumentParser = args.parser
            return handler(args, subparser)
        finally:
            # Output still buffered (argparse's help, say) fails here, where it is handled, rather than at exit.
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The interpreter flushes stdout once more at exit, which would fail again and print "Exception ignored":
        # the recipe of Python's signal documentation (note on SIGPIPE) points stdout at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE_EXIT
