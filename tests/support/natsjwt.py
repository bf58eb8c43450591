"""NATS operator mode made in the test: an operator, a JetStream-enabled account it signs, and a user the account
signs, as the ``nsc`` tool would make them (JWTs signed with NKEYs), with the nats-server configuration and the
user's ``.creds`` file."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from typing import Any

import nkeys

UNLIMITED = -1
ACCOUNT_LIMITS = {
    "subs": UNLIMITED,
    "data": UNLIMITED,
    "payload": UNLIMITED,
    "imports": UNLIMITED,
    "exports": UNLIMITED,
    "wildcards": True,
    "conn": UNLIMITED,
    "leaf": UNLIMITED,
    "mem_storage": UNLIMITED,  # JetStream is on for an account whose storage limits are not 0
    "disk_storage": UNLIMITED,
    "streams": UNLIMITED,
    "consumer": UNLIMITED,
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class KeyPair:
    """An NKEY of one role (operator, account or user): its seed, public key, and signing."""

    def __init__(self, prefix: int) -> None:
        self.seed: bytes = nkeys.encode_seed(os.urandom(32), prefix)
        self._keys = nkeys.from_seed(bytearray(self.seed))
        self.public: str = self._keys.public_key.decode()

    def sign(self, data: bytes) -> bytes:
        signature: bytes = self._keys.sign(data)
        return signature


def nats_jwt(subject: KeyPair, issuer: KeyPair, name: str, nats: dict[str, Any]) -> str:
    """A NATS JWT (``alg: ed25519-nkey``) about ``subject``, signed by ``issuer``; ``jti`` is the claims' hash."""
    claims: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public, "name": name, "sub": subject.public}
    claims["nats"] = {**nats, "version": 2}
    digest = hashlib.new("sha512_256", json.dumps(claims).encode()).digest()
    claims["jti"] = base64.b32encode(digest).rstrip(b"=").decode()
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    signing_input = f"{header}.{_b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{_b64(issuer.sign(signing_input.encode()))}"


class Operator:
    """One operator, its system account (JetStream needs one), one account with JetStream, one user of it."""

    def __init__(self) -> None:
        self.operator = KeyPair(nkeys.PREFIX_BYTE_OPERATOR)
        self.system = KeyPair(nkeys.PREFIX_BYTE_ACCOUNT)
        self.account = KeyPair(nkeys.PREFIX_BYTE_ACCOUNT)
        self.user = KeyPair(nkeys.PREFIX_BYTE_USER)

    def server_config(self) -> str:
        """nats-server's configuration: trust the operator, know the accounts from memory."""
        operator_jwt = nats_jwt(self.operator, self.operator, "operator", {"type": "operator"})
        system_jwt = nats_jwt(self.system, self.operator, "SYS", {"type": "account"})
        account_jwt = nats_jwt(self.account, self.operator, "telemetry", {"type": "account", "limits": ACCOUNT_LIMITS})
        return (
            f'operator: "{operator_jwt}"\n'
            f"system_account: {self.system.public}\n"
            "resolver: MEMORY\n"
            "resolver_preload: {\n"
            f'  {self.system.public}: "{system_jwt}"\n'
            f'  {self.account.public}: "{account_jwt}"\n'
            "}\n"
        )

    def user_creds(self) -> str:
        """The user's ``.creds`` file, laid out as ``nsc`` writes it."""
        user_jwt = nats_jwt(
            self.user,
            self.account,
            "device-reader",
            {"type": "user", "pub": {}, "sub": {}, "subs": UNLIMITED, "data": UNLIMITED, "payload": UNLIMITED},
        )
        return (
            "-----BEGIN NATS USER JWT-----\n"
            f"{user_jwt}\n"
            "------END NATS USER JWT------\n\n"
            "************************* IMPORTANT *************************\n"
            "NKEY Seed printed below can be used to sign and prove identity.\n"
            "NKEYs are sensitive and should be treated as secrets.\n\n"
            "-----BEGIN USER NKEY SEED-----\n"
            f"{self.user.seed.decode()}\n"
            "------END USER NKEY SEED------\n\n"
            "*************************************************************\n"
        )
