"""The connection to NATS and the JetStream stream behind it.

A service starts even when NATS is down: it connects in the background, retries for ever, and
reports why it is not ready until the stream is confirmed. The stream is created or brought in line
with the settings on every (re)connect, and whatever cannot be changed is logged plainly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.natsconn import NatsSecurity, NatsSecurityError
from core.redact import redact_url, redact_urls
from core.settings import Settings
from core.topics import Subjects

log = structlog.get_logger(__name__)

RECONNECT_WAIT_S = 0.5
MUTABLE_FIELDS = (
    "subjects",
    "max_age",
    "max_bytes",
    "max_msgs_per_subject",
    "num_replicas",
    "duplicate_window",
    "allow_direct",  # snapshot=latest with since= reads older readings by direct get (stream/snapshot.py)
)


def desired_stream(settings: Settings) -> StreamConfig:
    """The stream the settings ask for."""
    return StreamConfig(
        name=settings.stream_name,
        description="Sensor readings; subjects are <prefix>.<site>.<device>.<metric>",
        subjects=[Subjects(settings.subject_prefix).all],
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age_s,
        max_bytes=settings.stream_max_bytes,
        max_msgs_per_subject=settings.stream_max_msgs_per_subject,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.stream_duplicate_window_s,
        storage=StorageType(settings.stream_storage.value),
        allow_direct=True,
    )


def _same(field: str, current: Any, wanted: Any) -> bool:
    if field in ("max_age", "duplicate_window"):
        return round(float(current or 0), 3) == round(float(wanted or 0), 3)
    if field == "subjects":
        return set(wanted or []) <= set(current or [])
    return bool(current == wanted)


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream, or update what may be updated; say clearly what could not be changed."""
    wanted = desired_stream(settings)
    try:
        info = await js.stream_info(settings.stream_name)
    except nats.js.errors.NotFoundError:
        await js.add_stream(wanted)
        log.info("stream_created", stream=settings.stream_name, subjects=wanted.subjects)
        return
    current = info.config
    if current.storage != wanted.storage:
        log.error(
            "stream_setting_not_changed",
            stream=settings.stream_name,
            setting="storage",
            current=str(current.storage),
            wanted=str(wanted.storage),
            reason="JetStream cannot change the storage of an existing stream; recreate it to change this",
        )
    changes = {
        field: {"current": getattr(current, field), "wanted": getattr(wanted, field)}
        for field in MUTABLE_FIELDS
        if not _same(field, getattr(current, field), getattr(wanted, field))
    }
    if not changes:
        log.info("stream_ok", stream=settings.stream_name)
        return
    update = StreamConfig.from_response(current.as_dict())
    for field in changes:
        setattr(update, field, getattr(wanted, field))
    if "subjects" in changes:
        update.subjects = sorted(set(current.subjects or []) | set(wanted.subjects or []))
    try:
        await js.update_stream(update)
    except nats.js.errors.APIError as err:
        log.error("stream_settings_not_changed", stream=settings.stream_name, changes=changes, reason=err.description)
        return
    log.info("stream_updated", stream=settings.stream_name, changes=changes)


class JetStreamLink:
    """A service's NATS connection: connects in the background, heals by itself, and knows if it is usable."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name
        self.nc: NATS | None = None
        self.security: NatsSecurity | None = None  # read at the first connection attempt, then kept
        self.last_error: str | None = None  # why the last connection attempt failed, for /readyz
        self.js: JetStreamContext | None = None
        self.stream_confirmed = asyncio.Event()
        self.on_reconnected: list[Callable[[], None]] = []
        self.reconnects = 0  # reconnections after a lost connection, for telemetry_nats_reconnects_total
        self._task: asyncio.Task[None] | None = None
        self._confirm_task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin connecting; returns at once."""
        self._task = asyncio.create_task(self._connect(), name=f"{self.name}-nats-connect")

    async def stop(self) -> None:
        """Stop connecting and close the connection (pending publishes are flushed first)."""
        for task in (self._task, self._confirm_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.nc is not None and not self.nc.is_closed:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await self.nc.drain()

    @property
    def connected(self) -> bool:
        """Connected to NATS now (False before the first connection and while reconnecting)."""
        return self.nc is not None and self.nc.is_connected

    def expose(self, registry: CollectorRegistry) -> None:
        """Expose the connection's state and its reconnections on a service's registry, read at scrape."""
        registry.register(LinkMetrics(self))

    def not_ready_reason(self) -> str | None:
        """Why this service cannot serve now, or None when it can."""
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS" + (f": {self.last_error}" if self.last_error else "")
        if not self.stream_confirmed.is_set():
            return f"stream {self.settings.stream_name} not confirmed yet"
        return None

    async def _connect(self) -> None:
        while self.nc is None:
            try:
                if self.security is None:
                    self.security = await asyncio.to_thread(NatsSecurity.load, self.settings)
                self.nc = await nats.connect(
                    servers=self.settings.nats_urls,
                    name=self.name,
                    connect_timeout=self.settings.nats_connect_timeout_s,
                    reconnect_time_wait=RECONNECT_WAIT_S,
                    max_reconnect_attempts=-1,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    **self.security.nats_py_options(),
                )
            except (TimeoutError, nats.errors.Error, OSError, NatsSecurityError) as err:
                self._note_error(err)
                await asyncio.sleep(RECONNECT_WAIT_S)
        self.last_error = None
        self.js = self.nc.jetstream(timeout=self.settings.publish_timeout_s)
        url = self.nc.connected_url
        log.info("nats_connected", server=redact_url(url.geturl()) if url else "")
        await self._confirm_stream()

    async def _confirm_stream(self) -> None:
        """Make sure the stream exists; retry while JetStream is not answering (e.g. a cluster electing)."""
        assert self.js is not None
        while True:
            try:
                await ensure_stream(self.js, self.settings)
            except (TimeoutError, nats.errors.Error) as err:
                log.warning("stream_check_failed", stream=self.settings.stream_name, error=str(err) or repr(err))
                await asyncio.sleep(RECONNECT_WAIT_S)
                continue
            self.stream_confirmed.set()
            return

    def recheck_stream(self) -> None:
        """JetStream did not answer for the stream (deleted, or electing a leader): make sure it exists again."""
        if self.js is not None and (self._confirm_task is None or self._confirm_task.done()):
            self._confirm_task = asyncio.create_task(self._confirm_stream(), name=f"{self.name}-stream-check")

    def _note_error(self, err: Exception) -> None:
        """Keep the error for /readyz; before the first connection it is why connecting failed (a wrong CA...)."""
        self.last_error = str(err) or repr(err)
        if self.nc is None:
            log.warning("nats_connect_failed", servers=redact_urls(self.settings.nats_urls), error=self.last_error)
        else:
            log.warning("nats_error", error=self.last_error)

    async def _on_error(self, err: Exception) -> None:
        # nats.connect retries within itself (max_reconnect_attempts=-1): each failed attempt arrives here.
        self._note_error(err)
        if self.nc is not None:
            close_failed_attempt(self.nc)

    async def _on_disconnected(self) -> None:
        self.last_error = None
        log.warning("nats_disconnected")

    async def _on_reconnected(self) -> None:
        self.last_error = None
        self.reconnects += 1
        log.info("nats_reconnected")
        for callback in self.on_reconnected:
            callback()
        self.recheck_stream()


def close_failed_attempt(nc: NATS) -> None:
    """Give back the socket of a reconnect attempt that failed after connecting (a server going away before its
    INFO): nats-py 2.16 leaves it open until the garbage collector finds it, with a ResourceWarning. For error_cb."""
    if (nc.is_connecting or nc.is_reconnecting) and nc._transport is not None:
        nc._transport.close()  # type: ignore[no-untyped-call]  # nats-py leaves Transport.close untyped


class LinkMetrics(Collector):
    """A link's NATS connection state and reconnections, read at scrape (nothing is counted on a hot path)."""

    def __init__(self, link: JetStreamLink) -> None:
        self._link = link

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "telemetry_nats_connected",
            "1 while the service's NATS connection is up, 0 before it first connects and while it reconnects.",
            value=1.0 if self._link.connected else 0.0,
        )
        yield CounterMetricFamily(
            "telemetry_nats_reconnects",
            "Times the service's NATS connection was lost and made again.",
            value=self._link.reconnects,
        )
