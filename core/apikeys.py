"""Device API keys, for devices that cannot mint a JWT: random keys, of which the service keeps only hashes.

A key is ``tk_`` and 43 characters of base64url (256 random bits): a JWT never starts with ``tk_``, so a
credential's shape says which it is. The keys file (``TELEMETRY_API_KEYS_FILE``) holds one key a line,
as its SHA-256 and the topic patterns it may publish to::

    # boiler 7 of plant 1, created 2026-12-03
    sha256:5e8c...9f0a plant1.boiler-7.>  # a comment may end a line too

Blank lines and ``#`` comments are ignored. A plain SHA-256 is enough for keys nobody chose (a slow
password hash protects guessable secrets; 256 random bits cannot be guessed). A key is found by its
hash in a dict: how long that takes depends on the hash of what was sent, which tells an attacker
nothing about any stored hash's key, so no comparison needs to be constant-time.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

from core.topics import InvalidPattern, Pattern
from core.watched import WatchedFile

KEY_PREFIX = "tk_"
KEY_BYTES = 32
HASH_PREFIX = "sha256:"
HASH_RE = re.compile(r"sha256:([0-9a-f]{64})")
KeyTable = dict[bytes, tuple[Pattern, ...]]


def is_api_key(credential: str) -> bool:
    """Whether a credential is an API key (else it is taken for a JWT)."""
    return credential.startswith(KEY_PREFIX)


def create_key() -> str:
    """A new random key, to be shown once to whoever installs it on the device."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def key_line(key: str, patterns: list[Pattern]) -> str:
    """The keys file's line for ``key``: its hash and its publish patterns."""
    digest = hashlib.sha256(key.encode()).hexdigest()
    return " ".join([HASH_PREFIX + digest, *map(str, patterns)])


def parse_keys(text: str) -> KeyTable:
    """The file's keys, by SHA-256 digest; raises ValueError naming the first bad line."""
    table: KeyTable = {}
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.partition("#")[0].split()
        if not words:
            continue
        found = HASH_RE.fullmatch(words[0])
        if found is None:
            raise ValueError(f"line {number}: expected sha256:<64 lowercase hex digits> first")
        digest = bytes.fromhex(found.group(1))
        if digest in table:
            raise ValueError(f"line {number}: this key is on an earlier line already")
        if len(words) == 1:
            raise ValueError(f"line {number}: a key needs at least one topic pattern it may publish to")
        try:
            table[digest] = tuple(Pattern.parse(word) for word in words[1:])
        except InvalidPattern as err:
            raise ValueError(f"line {number}: {err}") from None
    return table


class ApiKeys:
    """The keys file, read again when it changes: a line removed refuses its key within a second, no restart."""

    def __init__(self, path: Path) -> None:
        self.file: WatchedFile[KeyTable] = WatchedFile(path, parse_keys, {})

    def publish_patterns(self, key: str) -> tuple[Pattern, ...] | None:
        """The patterns ``key`` may publish to, or None for a key that is not (or no longer) in the file."""
        return self.file.current().get(hashlib.sha256(key.encode()).digest())
