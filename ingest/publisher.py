"""Publishing a validated batch to JetStream: pipelined, bounded in time, successful only if all is stored.

Every reading is sent (``PublishContext.publish_reading``: nats-py's ``publish_async`` made leaner, or
``publish_async`` itself where the nats-py in use lacks what the lean path needs) before any
acknowledgement is awaited, so a batch costs one round trip, not one per reading, with at most
``max_in_flight`` readings of the process waiting for theirs. The answer is a success only when every
PubAck arrived; anything else is a 503 whose message says how much was stored and that retrying with the
same ids is safe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js.api import PubAck

from core.errors import ServiceUnavailable
from core.jetstream import JetStreamLink
from core.readings import Reading, ReceiveClock, stored_payloads
from core.settings import Settings
from core.topics import Subjects
from ingest.deadlines import Deadlines
from ingest.metrics import IngestMetrics
from ingest.publish_context import PublishContext

log = structlog.get_logger(__name__)


async def acknowledged(futures: list[asyncio.Future[PubAck]]) -> None:
    """Wait until every future is done; the caller bounds the wait in time.

    JetStream acknowledges in the order of publishing, so once the last future is done the others almost
    always are: one wait per batch. A future is awaited directly (a task's own wake-up, no ``asyncio.wait``
    and its timer: 8 to 10 µs a request); a failed one is looked at with the others afterwards.
    """
    for future in reversed(futures):
        if not future.done():
            try:
                await future
            except Exception:  # its error is read in Publisher._collect and _first_error
                pass


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class Stored:
    """Where JetStream keeps one reading: its topic and stream sequence (the original one for a duplicate)."""

    topic: str
    seq: int
    duplicate: bool


def error_of(future: asyncio.Future[PubAck]) -> BaseException | None:
    """The exception a finished publish ended with, or None (still waiting, cancelled, or acknowledged)."""
    if not future.done() or future.cancelled():
        return None
    return future.exception()


class Publisher:
    """Publishes batches of readings on the service's JetStream link."""

    def __init__(self, link: JetStreamLink, settings: Settings, metrics: IngestMetrics) -> None:
        self._link = link
        self._settings = settings
        self._metrics = metrics
        self._subjects = Subjects(settings.subject_prefix)
        self._deadlines = Deadlines(settings.publish_timeout_s)
        self._clock = ReceiveClock()
        self._js: PublishContext | None = None

    def in_flight(self) -> int:
        """Readings published and still waiting for their acknowledgement (0 between requests)."""
        return 0 if self._js is None else self._js.publish_async_pending()

    def _context(self, nc: NATS) -> PublishContext:
        # Created once on the link's connection, which survives reconnects; its reply subscription is reused.
        if self._js is None:
            self._js = PublishContext(
                nc,
                timeout_s=self._settings.publish_timeout_s,
                max_in_flight=self._settings.max_in_flight,
                stream=self._settings.stream_name,
            )
        return self._js

    async def publish(self, readings: Sequence[Reading]) -> list[Stored]:
        """Store every reading, in order; raises ServiceUnavailable unless JetStream acknowledged all of them."""
        nc = self._link.nc
        reason = self._link.not_ready_reason()
        if reason is not None or nc is None:
            # Fail fast: a disconnected client would buffer the readings and maybe store them after our 503.
            raise self._unavailable(f"cannot store readings now: {reason}", readings=readings, sent=0, acked=0)
        js = self._context(nc)

        started = time.perf_counter()
        encoded = stored_payloads(readings, self._clock.now())
        futures: list[asyncio.Future[PubAck]] = []
        try:
            failure = await self._send(js, readings, encoded, futures)
        finally:
            # An abandoned future keeps its in-flight slot (PublishContext) until it is done.
            for future in futures:
                if not future.done():
                    future.cancel()

        acks = self._collect(futures)
        if failure is None and len(acks) == len(readings):
            self._metrics.publish_seconds.observe(time.perf_counter() - started)
            return [Stored(topic, ack.seq, bool(ack.duplicate)) for (topic, _), ack in zip(encoded, acks, strict=True)]
        if failure is None:
            failure = self._first_error(futures) or self._timed_out(len(readings) - len(acks))
        if any(isinstance(error_of(f), nats.js.errors.NoStreamResponseError) for f in futures):
            self._link.recheck_stream()  # the stream may have been deleted: it is created again
        raise self._unavailable(failure, readings=readings, sent=len(futures), acked=len(acks))

    async def _send(
        self,
        js: PublishContext,
        readings: Sequence[Reading],
        encoded: list[tuple[str, bytes]],
        futures: list[asyncio.Future[PubAck]],
    ) -> str | None:
        """Publish every reading, then wait for the acknowledgements, within ``publish_timeout_s`` in all; None when
        every reading was sent (acknowledged or not: the caller counts), else why not all were sent.

        ``futures`` is the caller's, so that it can clean up whatever was sent before a failure.
        """
        subjects = self._subjects
        try:
            # One timeout for both: it bounds the one wait a publish may do (for one of the max_in_flight slots) and
            # the wait for the acknowledgements.
            with self._deadlines.window() as window:
                for reading, (topic, payload) in zip(readings, encoded, strict=True):
                    futures.append(await js.publish_reading(subjects.for_topic(topic), payload, reading.dedup_id))
                if window.expired():  # nats-py swallows a cancellation inside a forced flush
                    return self._timed_out(len(readings))
                await acknowledged(futures)
        except TimeoutError:
            if len(futures) == len(readings):
                return None
            if js.slots_full():
                return (
                    f"too many readings waiting for JetStream's acknowledgement in this process (max_in_flight "
                    f"{self._settings.max_in_flight}, no room within {self._settings.publish_timeout_s:g} s)"
                )
            return self._timed_out(len(readings) - len(futures))
        except nats.errors.ConnectionReconnectingError:
            return "lost the connection to NATS while publishing"
        except nats.errors.Error as err:
            return f"NATS refused the publish: {err}"
        return None

    def _collect(self, futures: list[asyncio.Future[PubAck]]) -> list[PubAck]:
        """The acknowledgements received, counted in the metrics even when the request as a whole fails."""
        acks = [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None]
        duplicates = sum(1 for ack in acks if ack.duplicate)
        self._metrics.readings_stored.count += len(acks) - duplicates
        self._metrics.readings_duplicate.count += duplicates
        return acks

    @staticmethod
    def _first_error(futures: list[asyncio.Future[PubAck]]) -> str | None:
        for future in futures:
            err = error_of(future)
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
        self._metrics.readings_not_stored.inc(len(readings) - acked)  # the acknowledged ones count as stored
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
