"""Publishing a validated batch to JetStream: pipelined, bounded in time, successful only if all is stored.

Every reading is sent with ``publish_async`` before any acknowledgement is awaited, so a batch costs
one round trip, not one per reading. The answer is a success only when every PubAck arrived; anything
else is a 503 whose message says how much was stored and that retrying with the same ids is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from core.errors import ServiceUnavailable
from core.jetstream import JetStreamLink
from core.readings import Reading, stored_payload
from core.settings import Settings
from core.topics import Subjects
from ingest.metrics import IngestMetrics

log = structlog.get_logger(__name__)

MSG_ID = Header.MSG_ID.value
NUID_AND_DOT_CHARS = 22 + 2  # how nats-py cuts a publish token out of its reply subject


class PublishContext(JetStreamContext):
    """A JetStream context whose ``publish_async`` futures also fail on a JetStream API error.

    nats-py 2.16's reply handler *raises* the APIError (``APIError.from_error`` raises) instead of
    setting it on the future: the error goes to the connection's error callback and the future stays
    pending until our timeout, so a full or mismatched stream would look like a slow one and hold its
    in-flight slots for ``publish_timeout_s``. This hands the error to the future it belongs to.
    """

    async def _handle_async_reply(self, msg: Msg) -> None:
        try:
            await super()._handle_async_reply(msg)
        except nats.js.errors.APIError as err:
            future = self._publish_async_futures.get(msg.subject[len(self._nc._inbox_prefix) + NUID_AND_DOT_CHARS :])
            if future is not None and not future.done():
                future.set_exception(err)


@dataclass(frozen=True, slots=True)
class Stored:
    """Where JetStream keeps one reading: its topic and stream sequence (the original one for a duplicate)."""

    topic: str
    seq: int
    duplicate: bool


class Publisher:
    """Publishes batches of readings on the service's JetStream link."""

    def __init__(self, link: JetStreamLink, settings: Settings, metrics: IngestMetrics) -> None:
        self._link = link
        self._settings = settings
        self._metrics = metrics
        self._subjects = Subjects(settings.subject_prefix)
        self._js: PublishContext | None = None

    def in_flight(self) -> int:
        """Readings published and still waiting for their acknowledgement (0 between requests)."""
        return 0 if self._js is None else self._js.publish_async_pending()

    def _context(self, nc: NATS) -> PublishContext:
        # Created once on the link's connection, which survives reconnects; its reply subscription is reused.
        if self._js is None:
            self._js = PublishContext(nc, timeout=self._settings.publish_timeout_s)
        return self._js

    async def publish(self, readings: Sequence[Reading]) -> list[Stored]:
        """Store every reading, in order; raises ServiceUnavailable unless JetStream acknowledged all of them."""
        nc = self._link.nc
        reason = self._link.not_ready_reason()
        if reason is not None or nc is None:
            # Fail fast: a disconnected client would buffer the readings and maybe store them after our 503.
            raise self._unavailable(f"cannot store readings now: {reason}", readings=readings, sent=0, acked=0)
        js = self._context(nc)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.publish_timeout_s
        started = time.perf_counter()
        futures: list[asyncio.Future[PubAck]] = []
        try:
            failure = await self._send(nc, js, readings, futures, deadline)
            if failure is None and futures:
                await asyncio.wait(futures, timeout=max(0.0, deadline - loop.time()))
        finally:
            # An abandoned future keeps its slot in nats-py's in-flight limit until it is done.
            for future in futures:
                if not future.done():
                    future.cancel()

        acks = self._collect(futures)
        if failure is None and len(acks) == len(readings):
            self._metrics.publish_seconds.observe(time.perf_counter() - started)
            return [Stored(r.topic, ack.seq, bool(ack.duplicate)) for r, ack in zip(readings, acks, strict=True)]
        if failure is None:
            failure = self._first_error(futures) or self._timed_out(len(readings) - len(acks))
        raise self._unavailable(failure, readings=readings, sent=len(futures), acked=len(acks))

    async def _send(
        self,
        nc: NATS,
        js: PublishContext,
        readings: Sequence[Reading],
        futures: list[asyncio.Future[PubAck]],
        deadline: float,
    ) -> str | None:
        """Publish every reading without waiting for acknowledgements; None, or why not all were sent.

        ``futures`` is the caller's, so that it can clean up whatever was sent before a failure.
        """
        received_at = datetime.now(UTC)
        stream = self._settings.stream_name
        try:
            # The timeout bounds the one wait publish_async may do: for a slot under nats-py's in-flight limit.
            # (With ``wait_stall`` instead, Python 3.11 would create a task per reading.)
            async with asyncio.timeout_at(deadline) as window:
                for reading in readings:
                    if not nc.is_connected:
                        return "lost the connection to NATS while publishing"
                    futures.append(
                        await js.publish_async(
                            self._subjects.for_topic(reading.topic),
                            stored_payload(reading, received_at),
                            stream=stream,
                            headers=None if reading.id is None else {MSG_ID: reading.id},
                        )
                    )
        except TimeoutError:
            return self._timed_out(len(readings) - len(futures))
        except nats.js.errors.TooManyStalledMsgsError:
            return (
                "too many readings waiting for JetStream's acknowledgement in this process "
                f"(no room within {self._settings.publish_timeout_s:g} s)"
            )
        except nats.errors.Error as err:
            return f"NATS refused the publish: {err}"
        if window.expired():  # nats-py swallows a cancellation inside a forced flush
            return self._timed_out(len(readings))
        return None

    def _collect(self, futures: list[asyncio.Future[PubAck]]) -> list[PubAck]:
        """The acknowledgements received, counted in the metrics even when the request as a whole fails."""
        acks = [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self._metrics.readings_stored.inc(len(acks) - duplicates)
        self._metrics.readings_duplicate.inc(duplicates)
        return acks

    @staticmethod
    def _first_error(futures: list[asyncio.Future[PubAck]]) -> str | None:
        for future in futures:
            if not future.done() or future.cancelled():
                continue
            err = future.exception()
            if isinstance(err, nats.js.errors.NoStreamResponseError):
                return "JetStream did not answer (no responders): the stream may be missing or electing a leader"
            if isinstance(err, nats.js.errors.APIError):
                return f"JetStream refused a reading: {err.description} (error {err.err_code})"
            if err is not None:
                return f"JetStream refused a reading: {err!r}"
        return None

    def _timed_out(self, missing: int) -> str:
        return f"JetStream did not acknowledge {missing} reading(s) within {self._settings.publish_timeout_s:g} s"

    def _unavailable(self, reason: str, *, readings: Sequence[Reading], sent: int, acked: int) -> ServiceUnavailable:
        log.warning("readings_not_stored", reason=reason, readings=len(readings), sent=sent, acknowledged=acked)
        if sent == 0:
            outcome = "nothing was stored"
        else:
            outcome = (
                f"{acked} of {len(readings)} readings were acknowledged, the others may or may not be stored; "
                f"retry the request: readings with an id are de-duplicated (within "
                f"{self._settings.stream_duplicate_window_s:g} s), so retrying them is safe"
            )
        return ServiceUnavailable(f"{reason}; {outcome}", retry_after_s=self._settings.retry_after_s)
