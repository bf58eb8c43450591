"""Auth's parts on their own: settings, grants and pattern coverage, which key verifies which token, key files and
their re-reading, API keys, and where a request's credential is read from."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydantic import ValidationError
from structlog.testing import capture_logs
from support.auth import (
    AUDIENCE,
    SECRET,
    claims,
    hs256,
    hs256_with_public_key,
    jwks,
    new_key,
    public_pem,
    signed,
    unsigned,
)

from core.apikeys import ApiKeys, create_key, is_api_key, key_line, parse_keys
from core.auth import Authenticator, CredentialPlaces, Grant, Unauthorized, read_credential
from core.jwtkeys import parse_public_keys
from core.settings import Settings
from core.topics import Pattern
from core.watched import UnusableFile, WatchedFile


def patterns(*texts: str) -> tuple[Pattern, ...]:
    return tuple(Pattern.parse(text) for text in texts)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"auth": "required"}, "auth=required needs a key source"),
        ({"jwt_secret": "too short"}, "jwt_secret must be at least 32 bytes"),
        ({"jwt_secret": SECRET, "jwt_secret_file": "/run/secret"}, "give jwt_secret or jwt_secret_file, not both"),
    ],
)
def test_impossible_auth_settings_are_refused_at_start(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        Settings(**values)


def test_the_secret_never_shows_in_the_settings() -> None:
    settings = Settings(auth="required", jwt_secret=SECRET)
    assert SECRET not in repr(settings) and SECRET not in str(settings.model_dump())


def test_a_grant_publishes_where_a_pattern_matches_and_follows_what_a_pattern_covers() -> None:
    grant = Grant(publish=patterns("plant1.boiler-7.>"), subscribe=patterns("plant1.>", "*.*.humidity"))
    assert [grant.may_publish(t) for t in ("plant1.boiler-7.temperature", "plant1.pump-2.flow")] == [True, False]
    followed = ("plant1.*.temperature", "plant2.a.humidity", "*.*.temperature", ">")
    assert [grant.may_subscribe(Pattern.parse(p)) for p in followed] == [True, True, False, False]
    assert not grant.publishes_everywhere()


def authenticator(tmp_path: Path, public_keys: str | None = None, **values: Any) -> Authenticator:
    if public_keys is not None:
        (tmp_path / "keys").write_text(public_keys)
        values["jwt_public_keys_file"] = tmp_path / "keys"
    return Authenticator(Settings(auth="required", jwt_audience=AUDIENCE, **values))


def refusal(auth: Authenticator, token: str) -> str:
    with pytest.raises(Unauthorized) as refused:
        auth.grant(token)
    return refused.value.message


def test_each_algorithm_is_verified_with_its_own_key_only(tmp_path: Path) -> None:
    rsa_key, ec_key = new_key("RS256"), new_key("ES256")
    with_pem = authenticator(tmp_path, public_pem(rsa_key))
    payload = claims(subscribe=("plant1.>",), iss="me")
    assert with_pem.grant(signed(payload, rsa_key)).subscribe == patterns("plant1.>")
    assert "not accepted" in refusal(with_pem, hs256(payload))  # no secret: no HS256 at all
    assert "not accepted" in refusal(with_pem, hs256_with_public_key(payload, rsa_key))
    assert "not accepted" in refusal(with_pem, unsigned(payload))
    assert "invalid token" in refusal(with_pem, signed(payload, ec_key))  # an ES256 token for an RSA key
    rs384 = jwt.encode(payload, rsa_key, algorithm="RS384")
    assert "not accepted" in refusal(with_pem, rs384)

    with_both = authenticator(tmp_path, jwks({"r": rsa_key, "e": ec_key}), jwt_secret=SECRET, jwt_issuer="me")
    assert with_both.grant(signed(payload, ec_key, kid="e")).subscribe == patterns("plant1.>")
    assert with_both.grant(hs256(payload)).subscribe == patterns("plant1.>")
    assert "Signature verification failed" in refusal(with_both, hs256_with_public_key(payload, rsa_key))
    assert "no public key with kid" in refusal(with_both, signed(payload, ec_key, kid="x"))
    assert "no public key" in refusal(with_both, signed(payload, ec_key))  # two keys: a token must name one
    assert "issuer" in refusal(with_both, hs256(claims(iss="someone else")))


def test_a_token_needs_exp_and_a_well_formed_claim(tmp_path: Path) -> None:
    auth = authenticator(tmp_path, jwt_secret=SECRET)
    assert '"exp"' in refusal(auth, hs256({"aud": AUDIENCE, "telemetry": {}}))
    assert "telemetry.subscribe" in refusal(auth, hs256(claims(subscribe=("plant1.a.b.c",))))
    assert "telemetry" in refusal(auth, hs256({**claims(), "telemetry": ["plant1.>"]}))
    assert "not a valid token" in refusal(auth, "not.a.token")
    grant = auth.grant(hs256({"exp": int(time.time()) + 60, "aud": AUDIENCE}))
    assert (grant.publish, grant.subscribe) == ((), ())  # no claim: a valid token that allows nothing


@pytest.mark.parametrize(
    ("document", "complaint"),
    [
        ("hello", "neither a JWKS document nor a PEM public key"),
        ('{"keys": []}', "non-empty 'keys'"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "not an RSA, EC or OKP public key"),
    ],
)
def test_a_public_keys_file_that_cannot_be_used_says_why(document: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_public_keys(document)


def test_private_keys_small_rsa_keys_and_unnamed_keys_are_refused_in_a_jwks() -> None:
    key = new_key("RS256")
    assert isinstance(key, rsa.RSAPrivateKey)
    private = json.loads(RSAAlgorithm.to_jwk(key))
    with pytest.raises(ValueError, match="a private key"):
        parse_public_keys(json.dumps({"keys": [private]}))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="1024 bits"):
        parse_public_keys(public_pem(small))
    two = json.loads(jwks({"a": key, "b": new_key("EdDSA")}))
    del two["keys"][1]["kid"]
    with pytest.raises(ValueError, match="needs a 'kid'"):
        parse_public_keys(json.dumps(two))


def test_api_keys_look_unlike_tokens_and_their_file_holds_only_hashes(tmp_path: Path) -> None:
    key = create_key()
    assert is_api_key(key) and len(key) == 46 and not is_api_key(hs256(claims()))
    line = key_line(key, [Pattern.parse("plant1.boiler-7.>")])
    assert key not in line and line.startswith("sha256:") and line.endswith(" plant1.boiler-7.>")
    (tmp_path / "keys").write_text(f"# devices\n\n{line}  # boiler 7\n")
    keys = ApiKeys(tmp_path / "keys")
    assert keys.publish_patterns(key) == patterns("plant1.boiler-7.>")
    assert keys.publish_patterns(create_key()) is None


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("sha256:abc plant1.>", "line 1: expected sha256:<64 lowercase hex digits>"),
        (f"# first\nsha256:{'0' * 64}", "line 2: a key needs at least one topic pattern"),
        (f"sha256:{'0' * 64} plant1.>\nsha256:{'0' * 64} plant2.>", "line 2: this key is on an earlier line"),
        (f"sha256:{'0' * 64} plant1..x", "line 1: token 2"),
    ],
)
def test_a_bad_line_of_the_api_keys_file_is_named(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        parse_keys(text)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_watched_file_is_read_again_when_it_changes_and_counts_as_empty_while_unusable(tmp_path: Path) -> None:
    path, clock, reads = tmp_path / "file", Clock(), []
    path.write_text("one")  # each text is as long as the others: a change is seen all the same

    def parse(text: str) -> str:
        if text == "bad":
            raise ValueError("not usable")
        reads.append(text)
        return text

    watched = WatchedFile(path, parse, "", clock)
    path.write_text("two")
    assert watched.current() == "one"  # looked at no more than once a second
    clock.now += 1
    assert (watched.current(), watched.version) == ("two", 1)
    clock.now += 1
    assert (watched.current(), reads) == ("two", ["one", "two"])  # unchanged: not read again
    with capture_logs() as logs:
        path.write_text("bad")
        clock.now += 1
        assert watched.current() == ""
        path.unlink()
        clock.now += 1
        assert watched.current() == ""
    assert [entry["event"] for entry in logs] == ["key_file_unusable"]
    path.write_text("six")
    clock.now += 1
    assert (watched.current(), watched.version) == ("six", 3)
    with pytest.raises(UnusableFile, match="No such file"):
        WatchedFile(tmp_path / "missing", parse, "")


@pytest.mark.parametrize(
    ("headers", "query", "places", "expected"),
    [
        ([(b"authorization", b"Bearer abc")], b"", CredentialPlaces(), "abc"),
        ([(b"authorization", b"bearer  abc ")], b"", CredentialPlaces(), "abc"),
        ([(b"x-api-key", b"tk_1")], b"", CredentialPlaces(), "tk_1"),
        ([(b"cookie", b"a=1; telemetry_token=t")], b"", CredentialPlaces(cookie="telemetry_token"), "t"),
        ([(b"cookie", b"telemetry_token=t")], b"", CredentialPlaces(), None),
        ([], b"topic=a.%3E&access_token=q", CredentialPlaces(query=True), "q"),
        ([], b"topic=a.%3E&access_token=q", CredentialPlaces(), None),
        (
            [(b"authorization", b"Bearer h"), (b"cookie", b"telemetry_token=c")],
            b"access_token=q",
            CredentialPlaces("telemetry_token", True),
            "h",
        ),
    ],
)
def test_the_credential_comes_from_the_first_place_that_has_one(
    headers: list[tuple[bytes, bytes]], query: bytes, places: CredentialPlaces, expected: str | None
) -> None:
    assert read_credential({"headers": headers, "query_string": query}, places) == expected


def test_an_authorization_header_of_another_scheme_is_refused() -> None:
    scope = {"headers": [(b"authorization", b"Basic dXNlcjpwYXNzd29yZA==")], "query_string": b""}
    with pytest.raises(Unauthorized, match="must be 'Bearer") as refused:
        read_credential(scope, CredentialPlaces())
    assert refused.value.headers == {"WWW-Authenticate": 'Bearer error="invalid_token"'}
