"""A small file that is parsed again when it changes, looked at no more than once a second: the key files.

Kubernetes updates a mounted Secret by swapping a symlink, an operator by rewriting the file. Its text is
read again (a few KB) and compared with the last: a ``stat`` would miss a rewrite of the same size within
one tick of the kernel's file clock. The look happens on the request that needs the file, not in a
thread: one small read a second costs less than a loop turn. A file that cannot be read or parsed any
more counts as empty (its keys stop working) until it is fixed: a key removed in a hurry must not live
on in memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

import structlog

log = structlog.get_logger(__name__)

CHECK_INTERVAL_S = 1.0
Parsed = TypeVar("Parsed")


class UnusableFile(ValueError):
    """A key file that cannot be read or parsed; the message says which and why (never a secret)."""


class WatchedFile(Generic[Parsed]):
    """``current()`` is ``parse(text)`` of the file as it is now, within a second; ``version`` counts the changes.

    Raises UnusableFile at construction (start-up fails with the reason); later failures are logged and
    give ``empty``.
    """

    def __init__(
        self, path: Path, parse: Callable[[str], Parsed], empty: Parsed, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self._parse = parse
        self._empty = empty
        self._clock = clock
        self._text: str | None = self._read()  # None while unusable
        self._value = self._parsed(self._text)
        self._checked = clock()
        self.version = 0

    def current(self) -> Parsed:
        """The parsed file, read again first if it changed since it was last looked at (at most once a second)."""
        now = self._clock()
        if now - self._checked >= CHECK_INTERVAL_S:
            self._checked = now
            self._refresh()
        return self._value

    def _refresh(self) -> None:
        try:
            text = self._read()
            if text == self._text:
                return
            value = self._parsed(text)
        except UnusableFile as err:
            if self._text is None:
                return  # unusable still: said so already
            log.error("key_file_unusable", path=str(self.path), error=str(err))
            self._text, self._value = None, self._empty
        else:
            log.info("key_file_reloaded", path=str(self.path))
            self._text, self._value = text, value
        self.version += 1

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except OSError as err:
            raise UnusableFile(f"{self.path}: {err.strerror}") from None
        except UnicodeDecodeError:
            raise UnusableFile(f"{self.path}: not UTF-8 text") from None

    def _parsed(self, text: str) -> Parsed:
        try:
            return self._parse(text)
        except ValueError as err:
            raise UnusableFile(f"{self.path}: {err}") from None
