"""How the services prove themselves to NATS and check the server: TLS and NATS credentials, read once.

The settings name files (a CA, a client certificate and key, an NKEY seed or a ``.creds`` file);
``NatsSecurity.load`` reads them once at start-up into what both kinds of connection use: the options
of nats-py's ``nats.connect`` and the stream service's own wire client (stream/wire.py), which signs
the server's nonce itself. User and password or a token stay in the URL, as nats-py reads them there.
"""

from __future__ import annotations

import base64
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys  # type: ignore[import-untyped]

from core.settings import ENV_PREFIX, Settings

# A .creds file: "-----BEGIN NATS USER JWT-----", the JWT, "------END NATS USER JWT------", then the same for
# "USER NKEY SEED"; the dashes vary between tools.
CREDS_BLOCK = re.compile(r"-{3,}\s*BEGIN ([A-Z ]+?)\s*-{3,}\s*\n\s*(\S+)\s*\n\s*-{3,}\s*END")


class NatsSecurityError(Exception):
    """A TLS or credentials file named in the settings cannot be used; the message names the setting."""


@dataclass(frozen=True, slots=True)
class NatsCredentials:
    """A NATS user's NKEY seed, and its JWT when the server is in operator mode (a ``.creds`` file)."""

    seed: bytes
    jwt: str | None = None

    def sign(self, nonce: str) -> str:
        """The server's nonce signed with the seed (ed25519), base64url without padding as NATS sends it."""
        signature: bytes = nkeys.from_seed(bytearray(self.seed)).sign(nonce.encode())
        return base64.urlsafe_b64encode(signature).rstrip(b"=").decode()

    def public_key(self) -> str:
        """The user's public NKEY (``U...``), what a server's ``authorization`` lists."""
        key: bytes = nkeys.from_seed(bytearray(self.seed)).public_key
        return key.decode()

    def connect_fields(self, nonce: str) -> dict[str, str]:
        """What a CONNECT carries to prove the user: the JWT (or else the public key) and the signed nonce."""
        identity = {"jwt": self.jwt} if self.jwt is not None else {"nkey": self.public_key()}
        return {**identity, "sig": self.sign(nonce)}

    def nats_py_options(self) -> dict[str, Any]:
        """The same proof, as ``nats.connect`` takes it."""
        if self.jwt is None:
            return {"nkeys_seed_str": self.seed.decode()}
        jwt = self.jwt
        return {"user_jwt_cb": lambda: bytearray(jwt.encode()), "signature_cb": lambda nonce: self.sign(nonce).encode()}


@dataclass(frozen=True, slots=True)
class NatsSecurity:
    """TLS and credentials of every connection to NATS; the default is neither (plain TCP, credentials in URLs).

    ``tls`` is None without a CA or client certificate: a TLS connection then checks the server against the system's
    CAs, as nats-py does.
    """

    tls: ssl.SSLContext | None = None
    tls_first: bool = False
    credentials: NatsCredentials | None = None
    server_name: str | None = None  # what a server's certificate must name; None: the host of its URL

    @classmethod
    def load(cls, settings: Settings) -> NatsSecurity:
        """Read the files the settings name (a blocking read: call it off the event loop)."""
        configured = settings.nats_tls_ca_file is not None or settings.nats_tls_cert_file is not None
        return cls(
            tls=_tls_context(settings) if configured else None,
            tls_first=settings.nats_tls_first,
            credentials=_credentials(settings),
            server_name=settings.nats_tls_server_name,
        )

    def tls_context(self) -> ssl.SSLContext:
        """The context a TLS connection uses: the configured one, else the system's CAs (as nats-py does)."""
        return self.tls if self.tls is not None else ssl.create_default_context()

    def nats_py_options(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.connect``."""
        options: dict[str, Any] = {"tls_handshake_first": self.tls_first}
        if self.tls is not None:
            options["tls"] = self.tls
        if self.server_name is not None:
            options["tls_hostname"] = self.server_name
        if self.credentials is not None:
            options.update(self.credentials.nats_py_options())
        return options


@contextmanager
def _reading(field: str, path: Path) -> Iterator[None]:
    """Name the setting and its file in whatever reading it raises."""
    try:
        yield
    except (OSError, ValueError, nkeys.NkeysError) as err:
        raise NatsSecurityError(f"{ENV_PREFIX}{field.upper()} ({path}): {err or type(err).__name__}") from err


def _tls_context(settings: Settings) -> ssl.SSLContext:
    """Servers checked against the configured CAs (else the system's); the client certificate shown when asked."""
    ca, cert, key = settings.nats_tls_ca_file, settings.nats_tls_cert_file, settings.nats_tls_key_file
    if ca is None:
        context = ssl.create_default_context()
    else:
        with _reading("nats_tls_ca_file", ca):
            context = ssl.create_default_context(cafile=ca)
    if cert is not None and key is not None:
        with _reading("nats_tls_cert_file", cert):
            context.load_cert_chain(certfile=cert, keyfile=key)
    return context


def _credentials(settings: Settings) -> NatsCredentials | None:
    if settings.nats_nkey_seed_file is not None:
        path = settings.nats_nkey_seed_file
        with _reading("nats_nkey_seed_file", path):
            return _checked(NatsCredentials(seed=path.read_bytes().strip()))
    if settings.nats_creds_file is not None:
        path = settings.nats_creds_file
        with _reading("nats_creds_file", path):
            return _checked(_parse_creds(path.read_text()))
    return None


def _parse_creds(text: str) -> NatsCredentials:
    blocks = {name: value for name, value in CREDS_BLOCK.findall(text)}
    jwt, seed = blocks.get("NATS USER JWT"), blocks.get("USER NKEY SEED")
    if jwt is None or seed is None:
        raise ValueError("not a .creds file: it needs a NATS USER JWT block and a USER NKEY SEED block")
    return NatsCredentials(seed=seed.encode(), jwt=jwt)


def _checked(credentials: NatsCredentials) -> NatsCredentials:
    """Fail at start-up, not at the first connection, on a seed that is not one."""
    if not credentials.public_key().startswith("U"):
        raise ValueError("not the NKEY seed of a user (SU...)")
    return credentials
