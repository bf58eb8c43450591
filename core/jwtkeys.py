"""The keys tokens are verified with: the HS256 secret, and public keys from a PEM or JWKS file.

Each key carries the one algorithm it verifies, so a token's ``alg`` header never picks how a key is
used: an HS256 token is checked against the secret only, an RS256/ES256/EdDSA token against a public
key of that algorithm only (no algorithm confusion), and ``none`` against nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from core.settings import MIN_SECRET_BYTES, Settings
from core.watched import UnusableFile

HS256 = "HS256"
PUBLIC_KEY_ALGORITHMS = ("RS256", "ES256", "EdDSA")
MIN_RSA_BITS = 2048
PUBLIC_KEY_TYPES = ("RSA", "EC", "OKP")
PRIVATE_MEMBERS = ("d", "k", "p", "q")  # JWK members of a private or symmetric key: never in a public keys file


@dataclass(frozen=True, slots=True)
class VerifyKey:
    """A public key and the one algorithm tokens verified with it must use."""

    algorithm: str
    key: Any  # a cryptography public key object


PublicKeys = dict[str | None, VerifyKey]  # by kid; a PEM file's one key has none


def hs256_secret(settings: Settings) -> bytes | None:
    """The HS256 secret, from ``jwt_secret`` or read from ``jwt_secret_file`` (a final newline is not part of it)."""
    if settings.jwt_secret is not None:
        return settings.jwt_secret.get_secret_value().encode()
    if settings.jwt_secret_file is None:
        return None
    try:
        secret = settings.jwt_secret_file.read_bytes().rstrip(b"\r\n")
    except OSError as err:
        raise UnusableFile(f"{settings.jwt_secret_file}: {err.strerror}") from None
    if len(secret) < MIN_SECRET_BYTES:
        raise UnusableFile(f"{settings.jwt_secret_file}: the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def parse_public_keys(text: str) -> PublicKeys:
    """A JWKS document (``{"keys": [...]}``) or one PEM public key; raises ValueError saying what is wrong."""
    if text.lstrip().startswith("{"):
        return _jwks(text)
    try:
        key = load_pem_public_key(text.encode())
    except ValueError:
        raise ValueError("neither a JWKS document nor a PEM public key") from None
    return {None: VerifyKey(_algorithm_of(key), key)}


def select_key(keys: PublicKeys, kid: str | None) -> VerifyKey | None:
    """The key a token names by ``kid``; a token without one, or a file with one key and no kid, needs no match."""
    if kid is not None and kid in keys:
        return keys[kid]
    if len(keys) == 1:
        ((only_kid, key),) = keys.items()
        if kid is None or only_kid is None:
            return key
    return None


def _algorithm_of(key: Any) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise ValueError(f"an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return "ES256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "EdDSA"
    raise ValueError("the key is none of RSA (RS256), EC P-256 (ES256) or Ed25519 (EdDSA)")


def _jwks(text: str) -> PublicKeys:
    try:
        entries = json.loads(text).get("keys")
    except (ValueError, AttributeError):
        raise ValueError("not a JWKS document (a JSON object with a 'keys' array)") from None
    if not isinstance(entries, list) or not entries:
        raise ValueError("a JWKS document needs a non-empty 'keys' array")
    keys: PublicKeys = {}
    for number, entry in enumerate(entries, start=1):
        kid = entry.get("kid") if isinstance(entry, dict) else None
        where = f"key {number}" + (f" (kid {kid!r})" if isinstance(kid, str) else "")
        if not isinstance(kid, str) and len(entries) > 1:
            raise ValueError(f"{where}: each key of a JWKS with several needs a 'kid'")
        if kid in keys:
            raise ValueError(f"{where}: kid {kid!r} is used twice")
        keys[kid] = _jwk(entry, where)
    return keys


def _jwk(entry: Any, where: str) -> VerifyKey:
    """One JWK; PyJWT's own errors are not repeated: they quote the whole JWK, which may hold a private key."""
    if not isinstance(entry, dict) or entry.get("kty") not in PUBLIC_KEY_TYPES:
        raise ValueError(f"{where}: not an RSA, EC or OKP public key")
    if any(member in entry for member in PRIVATE_MEMBERS):
        raise ValueError(f"{where}: a private key; the file must hold public keys only")
    try:
        jwk = jwt.PyJWK(entry)
    except (jwt.PyJWTError, KeyError, TypeError, ValueError):
        raise ValueError(f"{where}: not a usable public key") from None
    if jwk.algorithm_name not in PUBLIC_KEY_ALGORITHMS:
        raise ValueError(f"{where}: algorithm {jwk.algorithm_name}; accepted are {', '.join(PUBLIC_KEY_ALGORITHMS)}")
    try:
        fits = _algorithm_of(jwk.key) == jwk.algorithm_name  # a PEM key's rules: RSA size, the P-256 curve
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    if not fits:
        raise ValueError(f"{where}: its 'alg' {jwk.algorithm_name} does not fit the key")
    return VerifyKey(jwk.algorithm_name, jwk.key)
