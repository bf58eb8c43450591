"""Credentials for the auth tests: the HS256 secret, key pairs, JWKS files, tokens of every kind, API keys files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import get_default_algorithms
from support.sse import EVENT_TIMEOUT_S

from core.apikeys import create_key, key_line
from core.topics import Pattern

SECRET = "s3cret-for-tests-only-0123456789abcdef"  # 38 bytes: above HS256's minimum
AUDIENCE = "telemetry"
HOUR_S = 3600
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def new_key(algorithm: str) -> PrivateKey:
    """A fresh private key for RS256, ES256 or EdDSA."""
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def public_pem(key: PrivateKey) -> str:
    """The public half of ``key`` as a PEM file holds it."""
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def jwks(keys: dict[str, PrivateKey]) -> str:
    """A JWKS document of the public halves, by kid."""
    entries = []
    for kid, key in keys.items():
        algorithm = get_default_algorithms()[algorithm_of(key)]
        entries.append({**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid})
    return json.dumps({"keys": entries})


def algorithm_of(key: PrivateKey) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS256"
    return "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "EdDSA"


def claims(
    *, publish: tuple[str, ...] = (), subscribe: tuple[str, ...] = (), ttl_s: float = HOUR_S, **extra: Any
) -> dict[str, Any]:
    """Claims granting the patterns for ``ttl_s`` (negative: expired that long ago), with ``aud`` and ``extra``."""
    return {
        "exp": int(time.time() + ttl_s),
        "aud": AUDIENCE,
        "telemetry": {"publish": list(publish), "subscribe": list(subscribe)},
        **extra,
    }


def hs256(payload: dict[str, Any], secret: str | bytes = SECRET) -> str:
    """A token signed with the secret (or with ``secret``: another one, a public key's PEM for confusion)."""
    key = secret.encode() if isinstance(secret, str) else secret
    return jwt.encode(payload, key, algorithm="HS256")


def hs256_with_public_key(payload: dict[str, Any], key: PrivateKey) -> str:
    """The algorithm-confusion attack: an HS256 token whose HMAC key is the server's public key (its PEM text).

    Made by hand: PyJWT itself refuses to use a PEM key as an HMAC secret.
    """

    def segment(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = segment(b'{"alg":"HS256","typ":"JWT"}') + b"." + segment(json.dumps(payload).encode())
    signature = hmac.new(public_pem(key).encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + segment(signature)).decode()


def signed(payload: dict[str, Any], key: PrivateKey, kid: str | None = None) -> str:
    """A token signed with a private key, naming ``kid`` in its header when given."""
    return jwt.encode(payload, key, algorithm=algorithm_of(key), headers={"kid": kid} if kid else None)


def unsigned(payload: dict[str, Any]) -> str:
    """An ``alg: none`` token: no signature at all."""
    return jwt.encode(payload, None, algorithm="none")


def api_keys_file(path: Path, *grants: tuple[str, ...]) -> list[str]:
    """Write a keys file with a new key per grant (its publish patterns); returns the keys, in order."""
    keys = [create_key() for _ in grants]
    lines = [
        "# test keys",
        *(key_line(key, [Pattern.parse(p) for p in patterns]) for key, patterns in zip(keys, grants, strict=True)),
    ]
    path.write_text("\n".join(lines) + "\n")
    return keys


def remove_key(path: Path, key: str) -> None:
    """Rewrite the keys file without ``key``'s line: how an operator revokes it."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True) if digest not in line))


def bearer(credential: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


async def becomes(probe: Callable[[], Awaitable[int]], status: int, timeout_s: float = EVENT_TIMEOUT_S) -> None:
    """Ask until the answer is ``status``: a changed key file is looked at again within a second, on a request."""
    async with asyncio.timeout(timeout_s):
        while True:
            if await probe() == status:
                return
            await asyncio.sleep(0.05)


class Rotation:
    """A JWKS file whose keys are rotated: ``old`` and ``current`` at first, then ``current`` and ``new``."""

    def __init__(self, path: Path, payload: dict[str, Any]) -> None:
        self.path = path
        self.keys = {"old": new_key("RS256"), "current": new_key("ES256"), "new": new_key("EdDSA")}
        self.tokens = [signed(payload, key, kid) for kid, key in self.keys.items()]
        path.write_text(jwks({kid: self.keys[kid] for kid in ("old", "current")}))

    async def check(self, status_with: Callable[[str], Awaitable[int]], accepted: int) -> None:
        """The tokens of the keys in the file are accepted, before and after the rotation, and only those."""
        assert [await status_with(token) for token in self.tokens] == [accepted, accepted, 401]
        self.path.write_text(jwks({kid: self.keys[kid] for kid in ("current", "new")}))
        await becomes(lambda: status_with(self.tokens[0]), 401)
        assert [await status_with(token) for token in self.tokens] == [401, accepted, accepted]
