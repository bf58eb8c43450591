"""A lean NATS subscriber connection: one subject, deliveries parsed in bulk.

nats-py spends about 9 µs of CPU on each message it delivers (a regular expression per protocol
line, a ``Msg`` object, a hand-over through a queue to a task): more than everything else a
replayed event costs. A push consumer's deliveries need none of that, so the feeds read them on a
connection of their own that speaks just enough of the NATS protocol (INFO, CONNECT, SUB, PUB,
PING/PONG, MSG/HMSG, -ERR) and parses everything a socket read hands over in one pass.
JetStream's API (creating and deleting consumers) stays with nats-py.

It speaks TLS as nats-py does (upgraded after the server's INFO when it requires TLS or the URL is
``tls://``, or from the first byte with ``tls_first``) and proves an NKEY or ``.creds`` user by
signing the nonce of the INFO (core/natsconn.py).

A server error (``-ERR``) before the subscription is confirmed fails the connection: wrong
credentials, or a subscription the server refused. After it, the server keeps the connection open
for the errors it can live with (a permissions violation of a publish, an invalid subject) and closes
it itself for the others (as nats-server does): an error is logged and the connection goes on; if
the server then closes it, the ``WireError`` names the last error it sent.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any, cast
from urllib.parse import ParseResult

import nats.errors
import structlog

from core.natsconn import NatsCredentials, NatsSecurity

log = structlog.get_logger(__name__)

CRLF = b"\r\n"
MAX_CONTROL_LINE = 64 * 1024
MAX_PARSED_BYTES = 4 * 1024 * 1024  # read no further until the consumer has taken this much
SID = b"1"
PLAIN = NatsSecurity()  # no TLS settings, no NKEY: credentials only in the URL


class WireError(nats.errors.Error):
    """The connection failed, was refused, or was lost (a NATS error, handled where nats-py's are)."""


# One message as it came off the wire: (subject, reply, raw header block or b"" for MSG, payload).
# A plain tuple: a NamedTuple's constructor cost a tenth of a replayed event's CPU.
Delivery = tuple[bytes, bytes, bytes, bytes]


def connect_options(
    url: ParseResult, name: str, nonce: str | None = None, credentials: NatsCredentials | None = None
) -> bytes:
    """The CONNECT line: credentials from the URL as nats-py reads them (user and password, or a token), and the
    server's ``nonce`` signed when the user is an NKEY or a ``.creds`` one."""
    options: dict[str, Any] = {
        "verbose": False,
        "pedantic": False,
        "headers": True,
        "protocol": 1,
        "lang": "python",
        "version": "telemetry-wire",
        "name": name,
    }
    if url.username and url.password is not None:
        options["user"], options["pass"] = url.username, url.password
    elif url.username:
        options["auth_token"] = url.username
    if credentials is not None and nonce is not None:
        options.update(credentials.connect_fields(nonce))
    return b"CONNECT " + json.dumps(options, separators=(",", ":")).encode() + CRLF


def address(url: ParseResult) -> tuple[str, int]:
    """Host and port of a NATS URL, with nats-py's defaults."""
    return url.hostname or "127.0.0.1", url.port or 4222


class WireSubscriber(asyncio.Protocol):
    """A NATS connection with one subscription, read in batches with ``next_batch``.

    Everything a socket read brings is parsed at once into a list; reading pauses while more than
    ``MAX_PARSED_BYTES`` wait to be taken, so a slow consumer of the batches pushes back on the server.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._rest = b""
        self._parsed: list[Delivery] = []
        self._parsed_bytes = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._info: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pong: asyncio.Future[None] | None = None
        self._error: WireError | None = None
        self._server_error: str | None = None  # the last -ERR text, for the error of a connection it ends

    @classmethod
    async def open(cls, url: ParseResult, subject: str, *, name: str, security: NatsSecurity = PLAIN) -> WireSubscriber:
        """Connect to the server of ``url``, subscribe to ``subject``, and return once the server has the SUB.

        The caller bounds the time it takes (the settings' connect timeout)."""
        loop = asyncio.get_running_loop()
        host, port = address(url)
        tls = security.tls_context() if security.tls_first else None
        try:
            _, subscriber = await loop.create_connection(
                cls, host, port, ssl=tls, server_hostname=(security.server_name or host) if tls else None
            )
        except ssl.SSLError as err:
            raise WireError(f"TLS handshake with {host}:{port} failed: {err}") from err
        except OSError as err:
            raise WireError(f"cannot connect to {host}:{port}: {err}") from err
        try:
            await subscriber._handshake(url, subject, name, security)
        except BaseException:
            subscriber.close()
            raise
        return subscriber

    async def _handshake(self, url: ParseResult, subject: str, name: str, security: NatsSecurity) -> None:
        info = await self._info
        if not security.tls_first and (info.get("tls_required") or url.scheme == "tls"):
            await self._start_tls(*address(url), security.tls_context(), security.server_name)
        self._pong = asyncio.get_running_loop().create_future()
        connect = connect_options(url, name, info.get("nonce"), security.credentials)
        self.write(connect + b"SUB %s %s\r\nPING\r\n" % (subject.encode(), SID))
        await self._pong

    async def _start_tls(self, host: str, port: int, context: ssl.SSLContext, server_name: str | None) -> None:
        """Upgrade the connection after INFO; the certificate must name ``server_name``, else the host (an IP
        address is checked against the IP SANs)."""
        assert self._transport is not None
        try:
            transport = await asyncio.get_running_loop().start_tls(
                self._transport, self, context, server_hostname=server_name or host
            )
        except OSError as err:
            raise WireError(f"TLS handshake with {host}:{port} failed: {err}") from err
        if transport is None:
            raise WireError(f"TLS handshake with {host}:{port} failed: the connection closed")
        self._transport = transport

    def write(self, data: bytes) -> None:
        """Queue bytes for the server (a closed connection drops them: the feed is resetting anyway)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def publish_empty(self, subject: bytes) -> None:
        """An empty message, as a flow-control reply or a stalled-consumer nudge wants."""
        self.write(b"PUB %s 0\r\n\r\n" % subject)

    def close(self) -> None:
        """Close the connection now; a ``next_batch`` in progress raises ``WireError``.

        An abort: nothing still to be written matters to a subscriber that goes, and a TLS connection's graceful
        close would wait for the server's answer (up to asyncio's 30 s) before it let go of the socket."""
        if self._transport is not None:
            self._transport.abort()

    async def next_batch(self) -> list[Delivery]:
        """Every delivery parsed since the last call, waiting for at least one."""
        while not self._parsed:
            if self._error is not None:
                raise self._error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        batch, self._parsed, self._parsed_bytes = self._parsed, [], 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        return batch

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"connection lost: {exc}" if exc else "connection closed"
        if self._server_error is not None:
            reason += f" after the NATS server error: {self._server_error}"
        self._fail(WireError(reason))

    def data_received(self, data: bytes) -> None:
        buf = self._rest + data if self._rest else data
        try:
            pos = self._parse(buf)
        except (ValueError, IndexError):
            self._fail(WireError(f"malformed message line from the server: {buf[:80]!r}"))
            return
        self._rest = buf[pos:]
        if len(self._rest) > MAX_CONTROL_LINE and CRLF not in self._rest[:MAX_CONTROL_LINE]:
            self._fail(WireError("protocol line too long"))
            return
        self._parsed_bytes += len(data)
        if self._parsed and self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        # Pause only with something to take: a message larger than the limit must still arrive whole.
        if self._parsed_bytes > MAX_PARSED_BYTES and self._parsed and not self._paused and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()

    def _parse(self, buf: bytes) -> int:
        """Parse every complete message and control line in ``buf``; returns where the unparsed rest starts."""
        pos, end, parsed = 0, len(buf), self._parsed
        while pos < end:
            eol = buf.find(CRLF, pos)
            if eol < 0:
                break
            op = buf[pos : pos + 1]
            if op != b"M" and op != b"H":
                self._control(buf[pos:eol])
                pos = eol + 2
                continue
            # MSG <subject> <sid> [reply] <size> | HMSG <subject> <sid> [reply] <header size> <size>
            args = buf[pos:eol].split(b" ")
            start = eol + 2
            stop = start + int(args[-1])
            if stop + 2 > end:
                break
            if op == b"H":
                header_end = start + int(args[-2])
                reply = args[3] if len(args) == 6 else b""
                parsed.append((args[1], reply, buf[start:header_end], buf[header_end:stop]))
            else:
                reply = args[3] if len(args) == 5 else b""
                parsed.append((args[1], reply, b"", buf[start:stop]))
            pos = stop + 2
        return pos

    def _control(self, line: bytes) -> None:
        if line == b"PING":
            self.write(b"PONG\r\n")
        elif line == b"PONG":
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(None)
        elif line.startswith(b"INFO "):
            if not self._info.done():
                self._info.set_result(json.loads(line[5:]))
        elif line.startswith(b"-ERR"):
            self._on_server_error(line[4:].decode(errors="replace").strip().strip("'"))
        # +OK and anything newer are ignored

    def _on_server_error(self, text: str) -> None:
        """Fatal during the handshake; afterwards the server decides: it closes the connection or goes on."""
        self._server_error = text
        if self._pong is None or not self._pong.done():
            self._fail(WireError(f"NATS server error: {text}"))
        else:
            log.warning("nats_server_error", error=text)

    def _fail(self, error: WireError) -> None:
        if self._error is None:
            self._error = error
        for handshake in (self._info, self._pong):
            if handshake is not None and not handshake.done():
                handshake.set_exception(error)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self.close()
