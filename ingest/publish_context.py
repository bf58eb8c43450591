"""The JetStream context the ingest publishes with: nats-py 2.16's, with a bug worked around and a leaner publish.

``publish_async`` does, for every message, work a reading does not need: a ``wait_for`` around the
in-flight slot, a 22-character NUID made in a Python loop plus ``os.urandom`` for the reply token, a
headers dict that ``Client.publish`` re-checks with regular expressions and encodes key by key, and a
second validation of subject and reply. The lean path of ``publish_reading`` sends the same message
with the same bookkeeping (in-flight slot, future, reply subscription, statistics, flusher) and encodes
the headers from pre-encoded parts. Measured with ``python -m bench.ingest --quick`` (batches of 100,
the two paths interleaved, twice): 19.9k and 20.5k acknowledged readings per ingest CPU second against
12.6k and 16.7k through ``publish_async``, about 50 µs of CPU per reading instead of 60 to 80. Its
acknowledgements are read leaner too (``_handle_async_reply``), each as nats-py hands it to the reply
subscription (``InlineReplies``) rather than through that subscription's queue and task: a task's wake-up
per acknowledgement, 2 % of a single reading's request.

It relies on nats-py internals (``INTERNAL_METHODS``, ``INTERNAL_ATTRIBUTES``), checked when the
context is created. If one is missing or of another kind (a nats-py upgrade), one warning names them
and the context publishes through the public ``publish_async`` instead: the same message, slower. The
lean ``_handle_async_reply`` and its workaround rely on internals too and are then off: a JetStream API error
(a full or mismatched stream) leaves its future pending until the publisher gives up at
``publish_timeout_s``, so the request is a 503 saying the readings were not acknowledged in time
instead of naming the error, and its in-flight slots are held until then.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from functools import partial
from types import NoneType
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck
from pydantic_core import from_json

from core.readings import DEDUP_ID_MAX_CHARS

log = structlog.get_logger(__name__)

NUID_AND_DOT_CHARS = 22 + 2  # how nats-py cuts a publish token out of its reply subject
NO_RESPONDERS_STATUS = "503"  # the Status header of a publish no stream took
HEADER_LINE = b"NATS/1.0\r\n"
MSG_ID = Header.MSG_ID.value.encode()
# A reading's de-duplication id (core.readings): safe as a header value.
MSG_ID_VALUE = re.compile(rf"[\x21-\x7e]{{1,{DEDUP_ID_MAX_CHARS}}}")

# What the lean path and the reply workaround use of nats-py: coroutine methods, looked up on nats-py's
# classes, and attributes with their types, looked up on the client or context in use.
INTERNAL_METHODS: tuple[tuple[type, str], ...] = (
    (NATS, "_send_command"),
    (NATS, "_flush_pending"),
    (JetStreamContext, "_init_async_reply"),
    (JetStreamContext, "_handle_async_reply"),
)
INTERNAL_ATTRIBUTES: tuple[tuple[type, str, tuple[type, ...]], ...] = (
    (NATS, "_flush_queue", (asyncio.Queue, NoneType)),
    (NATS, "_inbox_prefix", (bytearray,)),
    (JetStreamContext, "_async_reply_prefix", (bytearray, NoneType)),
    (JetStreamContext, "_publish_async_futures", (dict,)),
    (JetStreamContext, "_publish_async_completed_event", (asyncio.Event,)),
    (NATS, "_subs", (dict,)),
)
# What InlineReplies relies on in the reply subscription nats-py makes (looked at when it is made).
SUBSCRIPTION_ATTRIBUTES = ("_subject", "_pending_queue", "_pending_size")


def api_error(error: dict[str, Any]) -> nats.js.errors.APIError:
    """The exception of a JetStream API error reply, of nats-py's class for its code (2.16's ``from_error`` raises
    it rather than returning it)."""
    try:
        made = nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as err:
        return err
    return made if isinstance(made, nats.js.errors.APIError) else nats.js.errors.APIError(**error)


def missing_internals(nc: NATS, js: JetStreamContext) -> list[str]:
    """The nats-py internals that ``nc`` and ``js`` lack or have of another kind, as ``Class.name``."""
    missing = [
        f"{owner.__name__}.{name}"
        for owner, name in INTERNAL_METHODS
        if not inspect.iscoroutinefunction(getattr(owner, name, None))
    ]
    for owner, name, types in INTERNAL_ATTRIBUTES:
        holder = nc if owner is NATS else js
        if not hasattr(holder, name) or not isinstance(getattr(holder, name), types):
            missing.append(f"{owner.__name__}.{name}")
    return missing


class PublishContext(JetStreamContext):
    """A JetStream context with ``publish_reading``, and whose publish futures also fail on a JetStream API error.

    nats-py 2.16's reply handler *raises* the APIError (``APIError.from_error`` raises) instead of
    setting it on the future: the error goes to the connection's error callback and the future stays
    pending until our timeout, so a full or mismatched stream would look like a slow one and hold its
    in-flight slots for ``publish_timeout_s``. ``_handle_async_reply`` hands the error to its future.
    ``lean`` says whether the internals check passed (the module's docstring says what changes if not).
    """

    def __init__(self, nc: NATS, *, timeout_s: float, max_in_flight: int, stream: str) -> None:
        super().__init__(nc, timeout=timeout_s, publish_async_max_pending=max_in_flight)
        self._client = nc  # our own reference: nats-py keeps its (_nc) among its internals
        self._max_in_flight = max_in_flight
        self._stream = stream
        # The headers publish_async would write for {"Nats-Msg-Id": id} and stream=, in the same order.
        self._stream_header = b"%s: %s\r\n\r\n" % (Header.EXPECTED_STREAM.value.encode(), stream.encode())
        self._reply_prefix = b""
        self._tokens = 0
        # The lean path's in-flight slots: publish_async's semaphore checked its waiters with a generator on every
        # acquire (``Semaphore.locked``), 0.5 µs a reading.
        self._free_slots = max_in_flight
        self._slot_freed = asyncio.Event()
        missing = missing_internals(nc, self)
        self.lean = not missing
        if missing:
            log.warning("nats_internals_missing", missing=missing, publishing_with="publish_async")

    async def _init_async_reply(self) -> None:
        """nats-py's reply subscription, its acknowledgements handled inline where the internals allow."""
        await super()._init_async_reply()
        if not self.lean:
            return
        assert self._async_reply_prefix is not None
        subject = self._async_reply_prefix.decode() + "*"
        subscriptions = self._client._subs.values()
        subscription = next((sub for sub in subscriptions if getattr(sub, "_subject", None) == subject), None)
        missing = [f"Subscription.{name}" for name in SUBSCRIPTION_ATTRIBUTES if not hasattr(subscription, name)]
        if missing or subscription is None:
            log.warning("nats_internals_missing", missing=missing, handling_replies_with="the subscription's queue")
            return
        subscription._pending_queue = InlineReplies(self, subscription)

    def settle(self, msg: Msg) -> None:
        """Settle the future of the publish this message acknowledges (the lean ``_handle_async_reply``)."""
        token = msg.subject[len(self._client._inbox_prefix) + NUID_AND_DOT_CHARS :]
        future = self._publish_async_futures.get(token)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            future.set_exception(nats.js.errors.NoStreamResponseError())
            return
        reply = from_json(msg.data)
        error = reply.get("error")
        if error is not None:
            future.set_exception(api_error(error))
            return
        future.set_result(
            PubAck(
                stream=reply["stream"], seq=reply["seq"], domain=reply.get("domain"), duplicate=reply.get("duplicate")
            )
        )

    async def _handle_async_reply(self, msg: Msg) -> None:
        """nats-py's reply handler, leaner where the internals allow, and handing a JetStream API error to its future.

        The lean one is nats-py 2.16's with pydantic-core's JSON parser (``json.loads`` of bytes: 2.5 µs, 0.4 here)
        and without ``PubAck.from_response`` (3 µs of dataclass reflection): together about 10 % of a reading's CPU
        in batches. Its PubAck has what the stream acknowledges for a message like ours (``stream``, ``seq``,
        ``domain``, ``duplicate``), not the fields of batch publishing.
        """
        if not self.lean:
            await super()._handle_async_reply(msg)
            return
        self.settle(msg)

    def slots_full(self) -> bool:
        """Whether every in-flight slot is taken (a publish now would wait for an acknowledgement)."""
        return self.publish_async_pending() >= self._max_in_flight

    async def publish_reading(self, subject: str, payload: bytes, msg_id: str | None) -> asyncio.Future[PubAck]:
        """``publish_async(subject, payload, stream=<stream>, headers={"Nats-Msg-Id": msg_id})``, leaner.

        Waits for an in-flight slot like publish_async, but a wait that is cancelled stays a cancellation;
        refuses to send (instead of buffering for after a reconnect) when the connection is not up then
        (through publish_async: when it is not up before the wait for a slot).
        """
        nc = self._client
        if msg_id is not None and not MSG_ID_VALUE.fullmatch(msg_id):
            raise nats.errors.BadHeaderError(msg_id)
        if len(payload) > nc.max_payload:
            raise nats.errors.MaxPayloadError
        if not self.lean:
            return await self._publish_public(subject, payload, msg_id)
        if not self._reply_prefix:
            if not self._async_reply_prefix:
                await self._init_async_reply()  # the reply subscription, shared with publish_async
            assert self._async_reply_prefix is not None
            self._reply_prefix = bytes(self._async_reply_prefix)
        while not self._free_slots:
            self._slot_freed.clear()
            await self._slot_freed.wait()
        if not nc.is_connected or nc.is_draining_pubs:
            raise nats.errors.ConnectionReconnectingError
        self._free_slots -= 1

        # Unique among this context's pending publishes, which is all a reply token has to be.
        self._tokens += 1
        token = f"{self._tokens:x}"
        future: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(partial(self._settled, token))
        self._publish_async_futures[token] = future
        if self._publish_async_completed_event.is_set():
            self._publish_async_completed_event.clear()

        headers = self._headers(msg_id)
        command = b"HPUB %s %s%s %d %d\r\n%s%s\r\n" % (
            subject.encode(),
            self._reply_prefix,
            token.encode(),
            len(headers),
            len(headers) + len(payload),
            headers,
            payload,
        )
        nc.stats["out_msgs"] += 1
        nc.stats["out_bytes"] += len(payload)
        await nc._send_command(command)
        if nc._flush_queue is not None and nc._flush_queue.empty():
            await nc._flush_pending()
        return future

    async def _publish_public(self, subject: str, payload: bytes, msg_id: str | None) -> asyncio.Future[PubAck]:
        """The same message through nats-py's public ``publish_async``."""
        if not self._client.is_connected or self._client.is_draining_pubs:
            raise nats.errors.ConnectionReconnectingError
        try:
            return await self.publish_async(
                subject, payload, stream=self._stream, headers=None if msg_id is None else {Header.MSG_ID.value: msg_id}
            )
        except nats.js.errors.TooManyStalledMsgsError:
            # Without wait_stall, publish_async raises this only for a cancelled wait for a slot: keep it one.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise asyncio.CancelledError from None
            raise

    def _headers(self, msg_id: str | None) -> bytes:
        if msg_id is None:
            return HEADER_LINE + self._stream_header
        return b"%s%s: %s\r\n%s" % (HEADER_LINE, MSG_ID, msg_id.encode(), self._stream_header)

    def _settled(self, token: str, future: asyncio.Future[PubAck]) -> None:
        # publish_async's own done callback: forget the token, free the slot.
        self._publish_async_futures.pop(token, None)
        if not self._publish_async_futures:
            self._publish_async_completed_event.set()
        self._free_slots += 1
        self._slot_freed.set()


class InlineReplies(asyncio.Queue[Msg]):
    """The reply subscription's queue, which settles each acknowledgement as nats-py hands it over and keeps none.

    Empty for ever, so nats-py's task for the subscription waits for good, and a drain finds nothing pending.
    """

    def __init__(self, context: PublishContext, subscription: Any) -> None:
        super().__init__()
        self._context = context
        self._subscription = subscription

    def put_nowait(self, item: Msg) -> None:
        self._subscription._pending_size -= len(item.data)  # nats-py counted it as waiting in the queue
        try:
            self._context.settle(item)
        except Exception:  # nats-py's task hands a callback's error to the error callback; never to its read loop
            log.exception("publish_reply_unreadable", subject=item.subject)
