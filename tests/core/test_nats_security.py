"""TLS and NATS credentials on every connection, against real nats-servers configured for them: both services end
to end, the stream's own wire client alone, and each way it can fail (wrong CA, expired certificate, no client
certificate or one of another CA, wrong NKEY) named at start and in /readyz, never a hang."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import nats
import nkeys
import pytest
from structlog.testing import capture_logs
from support.certs import CertificateAuthority, Issued
from support.natsjwt import KeyPair, Operator
from support.natsproc import AuthNatsServer
from support.sse import Serve, events, take

from core.jetstream import JetStreamLink
from core.natsconn import NatsSecurity, NatsSecurityError
from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream
from stream.wire import WireError, WireSubscriber
from telemetry.natsserver import LocalNatsServer

READING = {"site": "plant1", "device": "boiler-7", "metric": "temperature", "value": 71.5, "id": "b7-1"}
NO_HANG_S = 20.0  # far beyond a connect timeout: a failure that takes this long is a hang
# Each configuration NATS refuses, and what the error says (a regular expression): the wire client's, nats-py's and
# /readyz's alike. A server's refusal of a client certificate comes after the client's TLS 1.3 handshake is over:
# the client may see the alert, or only the connection the server closed, as it writes its CONNECT.
REFUSED = {
    "wrong-ca": "certificate verify failed",
    "expired-certificate": "certificate has expired",
    "no-client-certificate": "certificate required|Broken pipe|Connection reset|unexpected EOF",
    "foreign-client-certificate": "unknown ca|Broken pipe|Connection reset|unexpected EOF",
    "wrong-nkey": "Authorization Violation",
    "name-not-in-certificate": "IP address mismatch",
}
SERVER_NAME = "nats.internal"  # the one name of the "named" server certificate, which has no IP address


@dataclass(frozen=True)
class Pki:
    """A CA, what it issued (a server certificate for 127.0.0.1, valid or expired, one for a DNS name only, and a
    client's), and another CA with a client certificate of its own."""

    ca: CertificateAuthority
    server: Issued
    named: Issued
    expired: Issued
    client: Issued
    wrong_ca: CertificateAuthority
    foreign_client: Issued


@dataclass(frozen=True)
class Case:
    """A nats-server configuration and what a client needs to use it: the URL's scheme and the settings."""

    config: str
    scheme: str = "nats"
    settings: dict[str, Any] = field(default_factory=dict)


def tls_block(cert: Issued, *, verify_clients_with: Path | None = None, first: bool = False) -> str:
    """nats-server's ``tls`` block: the server's certificate, optionally clients verified, optionally TLS first."""
    lines = [f'cert_file: "{cert.cert_file}"', f'key_file: "{cert.key_file}"', "timeout: 10"]
    if verify_clients_with is not None:
        lines += [f'ca_file: "{verify_clients_with}"', "verify: true"]
    if first:
        lines.append("handshake_first: true")
    return "tls {\n  " + "\n  ".join(lines) + "\n}\n"


def client_files(client: Issued) -> dict[str, Path]:
    """The settings that show ``client``'s certificate."""
    return {"nats_tls_cert_file": client.cert_file, "nats_tls_key_file": client.key_file}


def new_user_seed(path: Path) -> str:
    """A new NKEY user: its seed written to ``path``; returns its public key (``U...``)."""
    user = KeyPair(nkeys.PREFIX_BYTE_USER)
    path.write_bytes(user.seed + b"\n")
    return user.public


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca, wrong_ca = CertificateAuthority(tmp_path / "pki", "ca"), CertificateAuthority(tmp_path / "pki", "wrong-ca")
    return Pki(
        ca=ca,
        server=ca.issue("server", server=True),
        named=ca.issue("named", server=True, dns_name=SERVER_NAME),
        expired=ca.issue("expired", server=True, expired=True),
        client=ca.issue("client", server=False),
        wrong_ca=wrong_ca,
        foreign_client=wrong_ca.issue("foreign-client", server=False),
    )


@pytest.fixture
def cases(pki: Pki, tmp_path: Path) -> dict[str, Case]:
    """Every configuration, by name: those that work, then those that must fail."""
    trusting = {"nats_tls_ca_file": pki.ca.cert_file}
    verifying = tls_block(pki.server, verify_clients_with=pki.ca.cert_file)
    user = new_user_seed(tmp_path / "user.nk")
    new_user_seed(tmp_path / "stranger.nk")
    operator = Operator()
    (tmp_path / "user.creds").write_text(operator.user_creds())
    nkey_users = f'authorization {{ users = [ {{ nkey: "{user}" }} ] }}\n'
    return {
        "tls-url": Case(tls_block(pki.server), "tls", trusting),
        "upgrade": Case(tls_block(pki.server), "nats", trusting),
        "tls-first": Case(tls_block(pki.server, first=True), "tls", {**trusting, "nats_tls_first": True}),
        "mutual-tls": Case(verifying, "tls", {**trusting, **client_files(pki.client)}),
        # A server reached by IP address (as a cluster announces its servers) whose certificate names it otherwise.
        "server-name": Case(tls_block(pki.named), "tls", {**trusting, "nats_tls_server_name": SERVER_NAME}),
        "nkey": Case(nkey_users, settings={"nats_nkey_seed_file": tmp_path / "user.nk"}),
        "creds": Case(operator.server_config(), settings={"nats_creds_file": tmp_path / "user.creds"}),
        "wrong-ca": Case(tls_block(pki.server), "tls", {"nats_tls_ca_file": pki.wrong_ca.cert_file}),
        "expired-certificate": Case(tls_block(pki.expired), "tls", trusting),
        "no-client-certificate": Case(verifying, "tls", trusting),
        "foreign-client-certificate": Case(verifying, "tls", {**trusting, **client_files(pki.foreign_client)}),
        "wrong-nkey": Case(nkey_users, settings={"nats_nkey_seed_file": tmp_path / "stranger.nk"}),
        "name-not-in-certificate": Case(tls_block(pki.named), "tls", trusting),
    }


@pytest.fixture
def secured_nats(tmp_path: Path) -> Iterator[Callable[[Case], str]]:
    """``secured_nats(case)``: a nats-server of the test's own with the case's configuration; returns its URL."""
    servers: list[AuthNatsServer] = []

    def start(case: Case) -> str:
        config = tmp_path / "nats.conf"
        config.write_text(case.config)
        server = AuthNatsServer(tmp_path, "-c", str(config))
        servers.append(server)
        server.start()
        return f"{case.scheme}://{server.host}:{server.port}"

    yield start
    for server in servers:
        server.stop()


WORKING = ["tls-url", "upgrade", "tls-first", "mutual-tls", "server-name", "nkey", "creds"]


@pytest.mark.parametrize("name", WORKING)
async def test_a_reading_goes_from_ingest_to_the_stream_through_a_secured_nats(
    name: str,
    cases: dict[str, Case],
    secured_nats: Callable[[Case], str],
    make_settings: Callable[..., Settings],
    serve: Serve,
) -> None:
    case = cases[name]
    settings = make_settings(nats_urls=[secured_nats(case)], **case.settings)
    with capture_logs() as logs:
        async with (
            serve(create_ingest(settings)) as ingest_url,
            serve(create_stream(settings)) as stream_url,
            events(stream_url, "plant1.>") as live,
            httpx.AsyncClient() as device,
        ):
            answer = await device.post(f"{ingest_url}/v1/readings", json=READING)
            assert answer.status_code == 202, answer.text
            seq = answer.json()["results"][0]["seq"]
            (event,) = await take(live, 1)
            # A dashboard resuming from the start gets it by a replay, on a wire connection of its own.
            async with events(stream_url, "plant1.>", headers={"Last-Event-ID": "0"}) as resumed:
                (replayed,) = await take(resumed, 1)
    assert int(event.id) == int(replayed.id) == seq
    secrets, logged = secret_lines(case), repr(logs)
    assert bool(secrets) == (name in ("mutual-tls", "nkey", "creds"))  # the check below looks for something
    assert [secret for secret in secrets if secret in logged] == []  # no seed, JWT or key in a log line


def secret_lines(case: Case) -> list[str]:
    """The lines of the case's seed, .creds and private key files that are secrets: a seed, a JWT, base64 of a key
    (not the files' markers and notes)."""
    return [
        line.strip()
        for setting in ("nats_nkey_seed_file", "nats_creds_file", "nats_tls_key_file")
        if setting in case.settings
        for line in Path(case.settings[setting]).read_text().splitlines()
        if len(line.strip()) >= 20 and " " not in line.strip() and not line.startswith(("-----", "*"))
    ]


@pytest.mark.parametrize("name", WORKING)
async def test_the_wire_client_alone_gets_messages_through_a_secured_nats(
    name: str, cases: dict[str, Case], secured_nats: Callable[[Case], str]
) -> None:
    case = cases[name]
    url = secured_nats(case)
    security = NatsSecurity.load(Settings(nats_urls=[url], **case.settings))
    subject = f"wire.{uuid.uuid4().hex}"
    subscriber = await WireSubscriber.open(urlparse(url), subject, name="test", security=security)
    nc = await nats.connect(url, **security.nats_py_options())
    try:
        await nc.publish(subject, b"over the wire")
        await nc.flush()
        batch = await subscriber.next_batch()
    finally:
        subscriber.close()
        await nc.close()
    assert [delivery[3] for delivery in batch] == [b"over the wire"]


@pytest.mark.parametrize("name", list(REFUSED))
async def test_the_wire_client_names_what_failed_without_hanging(
    name: str, cases: dict[str, Case], secured_nats: Callable[[Case], str]
) -> None:
    case = cases[name]
    url = secured_nats(case)
    security = NatsSecurity.load(Settings(nats_urls=[url], **case.settings))
    async with asyncio.timeout(NO_HANG_S):
        with pytest.raises(WireError, match=REFUSED[name]):
            await WireSubscriber.open(urlparse(url), "x", name="test", security=security)


@pytest.mark.parametrize("name", list(REFUSED))
async def test_a_nats_that_refuses_the_services_is_named_in_readyz(
    name: str,
    cases: dict[str, Case],
    secured_nats: Callable[[Case], str],
    make_settings: Callable[..., Settings],
    serve: Serve,
) -> None:
    case = cases[name]
    settings = make_settings(nats_urls=[secured_nats(case)], **case.settings)
    async with (
        serve(create_ingest(settings), ready=False) as ingest_url,
        serve(create_stream(settings), ready=False) as stream_url,
        httpx.AsyncClient() as client,
    ):
        for url in (ingest_url, stream_url):
            await readyz_says(client, url, f"^not connected to NATS: .*({REFUSED[name]})")


async def readyz_says(client: httpx.AsyncClient, url: str, reason: str) -> None:
    """/readyz answers 503 until its reason matches ``reason`` (a regular expression).

    The reason is the last attempt's error, and nats-py sometimes sees only the connection the server closed after
    its error (a reset): the named problem shows within a few attempts, which fail for as long as it lasts."""
    async with asyncio.timeout(NO_HANG_S):
        while True:
            ready = await client.get(f"{url}/readyz")
            assert ready.status_code == 503
            if re.search(reason, ready.json()["reason"]):
                return
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("name", ["wrong-ca", "expired-certificate"])
async def test_a_certificate_that_fails_is_named_in_the_connect_failed_warning(
    name: str, cases: dict[str, Case], secured_nats: Callable[[Case], str], settings: Settings
) -> None:
    case = cases[name]
    link = JetStreamLink(settings.model_copy(update={"nats_urls": [secured_nats(case)], **case.settings}), "test")
    with capture_logs() as logs:
        link.start()
        try:
            failed = await first_logged(logs, "nats_connect_failed")
        finally:
            await link.stop()
    assert re.search(REFUSED[name], failed["error"])
    assert failed["log_level"] == "warning"
    assert failed["servers"] == link.settings.nats_urls


async def first_logged(logs: list[dict[str, Any]], event: str) -> dict[str, Any]:
    """The first entry of ``event`` in captured logs, once it is there (a background task logs it)."""
    async with asyncio.timeout(NO_HANG_S):
        while True:
            for entry in logs:
                if entry["event"] == event:
                    return entry
            await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("files", "complaint"),
    [
        ({"nats_tls_ca_file": "missing.pem"}, r"TELEMETRY_NATS_TLS_CA_FILE \(missing.pem\): .*No such file"),
        ({"nats_nkey_seed_file": "garbage.nk"}, r"TELEMETRY_NATS_NKEY_SEED_FILE \(garbage.nk\): nkeys: invalid seed"),
        ({"nats_creds_file": "garbage.nk"}, r"TELEMETRY_NATS_CREDS_FILE \(garbage.nk\): not a \.creds file"),
    ],
)
def test_a_file_that_cannot_be_used_is_named_by_its_setting(
    files: dict[str, str], complaint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("garbage.nk").write_text("SUNOTASEED\n")
    with pytest.raises(NatsSecurityError, match=complaint):
        NatsSecurity.load(Settings(**files))


async def test_the_wire_client_insists_on_tls_for_a_tls_url(nats_server: LocalNatsServer) -> None:
    """A server that does not speak TLS is not talked to in the clear when the URL says tls://."""
    url = urlparse(f"tls://{nats_server.host}:{nats_server.port}")
    async with asyncio.timeout(NO_HANG_S):
        with pytest.raises(WireError, match=f"TLS handshake with {nats_server.host}:{nats_server.port} failed"):
            await WireSubscriber.open(url, "x", name="test")


async def test_the_stream_says_why_its_live_feed_cannot_start(
    nats_server: LocalNatsServer, make_settings: Callable[..., Settings], serve: Serve
) -> None:
    """nats-py talks in the clear to a tls:// server that offers no TLS; the stream's own connections do not, and
    /readyz says so."""
    settings = make_settings(nats_urls=[f"tls://{nats_server.host}:{nats_server.port}"])
    async with serve(create_stream(settings), ready=False) as url, httpx.AsyncClient() as client:
        await readyz_says(client, url, "^live feed not started yet: TLS handshake with .* failed")


async def test_a_file_that_cannot_be_used_is_named_in_readyz(
    make_settings: Callable[..., Settings], serve: Serve, tmp_path: Path
) -> None:
    settings = make_settings(nats_tls_ca_file=tmp_path / "missing.pem")
    async with serve(create_ingest(settings), ready=False) as url, httpx.AsyncClient() as client:
        await readyz_says(client, url, r"^not connected to NATS: TELEMETRY_NATS_TLS_CA_FILE \(.*missing\.pem\): ")
