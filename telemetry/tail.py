"""``telemetry tail``: follow a stream from a terminal and resume after every drop, as a browser's EventSource does.

After a lost connection (or a stream the server ended) it waits the server's ``retry:`` hint and
reconnects with ``Last-Event-ID`` set to the last id received, so the server replays what was missed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

import httpx
from httpx_sse import ServerSentEvent, SSEError, aconnect_sse

STREAM_PATH = "/v1/stream"
DEFAULT_RETRY_S = 2.0
CONNECT_TIMEOUT_S = 5.0


class StreamRefused(Exception):
    """The server answered with a 4xx that retrying will not fix (a bad pattern or event id)."""


@dataclass(frozen=True, slots=True)
class TailOptions:
    """Where to connect, what to follow and how to print it."""

    url: str
    patterns: tuple[str, ...]
    last_event_id: str | None = None
    snapshot: bool = False  # first the latest reading of every matching topic
    since_s: float | None = None  # first the readings of the last since_s seconds
    raw: bool = False
    idle_timeout_s: float = 60.0
    auth: httpx.Auth | None = None  # the credentials sent where the stream service requires them


def stream_url(url: str) -> str:
    """The SSE URL: a bare service URL gets ``/v1/stream``; a full URL is used as given."""
    return url.rstrip("/") + STREAM_PATH if urlsplit(url).path in ("", "/") else url


def reading_line(data: str) -> str:
    """``seq  topic  value unit`` for a reading event's JSON, or the data as is when it is not one."""
    try:
        reading = json.loads(data)
        seq, topic, value = reading["seq"], reading["topic"], reading["value"]
    except (ValueError, KeyError, TypeError):
        return data
    unit = reading.get("unit")
    return f"{seq:>10}  {topic:<40}  {value}{' ' + unit if unit else ''}"


class Tail:
    """One follower: the last event id and the retry delay carry over from one connection to the next."""

    def __init__(self, options: TailOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.options = options
        self.url = stream_url(options.url)
        self.last_event_id = options.last_event_id
        self.retry_s = DEFAULT_RETRY_S
        self.out = out
        self.err = err

    async def run(self) -> int:
        """Follow until cancelled; returns 1 only when the server refuses the request for good."""
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=self.options.idle_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, auth=self.options.auth) as client:
            while True:
                try:
                    delay_s = await self.follow(client)
                except StreamRefused as err:
                    self.status(f"refused: {err}")
                    return 1
                except (httpx.TransportError, SSEError) as err:
                    self.status(f"connection lost ({type(err).__name__}{': ' + str(err) if str(err) else ''})")
                    delay_s = self.retry_s
                where = f"after id {self.last_event_id}" if self.last_event_id else "from now"
                self.status(f"reconnecting in {delay_s:g} s, resuming {where}")
                await asyncio.sleep(delay_s)

    async def follow(self, client: httpx.AsyncClient) -> float:
        """One connection, read to its end; returns how long to wait before the next one."""
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        params = [("topic", pattern) for pattern in self.options.patterns]
        if not self.last_event_id:  # once an event came, a reconnect resumes after it instead
            params += self.start_params()
        async with aconnect_sse(client, "GET", self.url, params=params, headers=headers) as source:
            response = source.response
            if response.status_code == 429 or response.status_code >= 500:
                await response.aread()
                self.status(f"{response.status_code}, will retry: {error_message(response)}")
                retry_after = response.headers.get("retry-after", "").strip()
                return float(retry_after) if retry_after.isdigit() else self.retry_s
            if response.status_code != 200:
                await response.aread()
                raise StreamRefused(f"{response.status_code} {error_message(response)}")
            self.status(f"connected to {response.url}")
            async for event in source.aiter_sse():
                self.handle(event)
        self.status("stream closed by the server")
        return self.retry_s

    def start_params(self) -> list[tuple[str, str]]:
        """What the first connect asks for besides the live readings: a snapshot, the recent history."""
        params = [("snapshot", "latest")] if self.options.snapshot else []
        if self.options.since_s is not None:
            params.append(("since", f"-{self.options.since_s:.3f}".rstrip("0").rstrip(".") + "s"))
        return params

    def handle(self, event: ServerSentEvent) -> None:
        """Print one event; remember its id and any retry hint, as EventSource would."""
        if event.retry is not None:
            self.retry_s = event.retry / 1000
        if event.id:
            self.last_event_id = event.id
        if event.event == "reading":
            self.print(event.data if self.options.raw else reading_line(event.data))
        elif event.event != "message" or event.data:
            # reset, end, and anything new: shown, never silently dropped.
            notice = f"-- {event.event}: {event.data}"
            if self.options.raw:
                self.status(notice)
            else:
                self.print(notice)

    def print(self, line: str) -> None:
        """A line of output, flushed so that a pipe (``| grep``) sees it at once."""
        self.out.write(line + "\n")
        self.out.flush()

    def status(self, message: str) -> None:
        """Connection news goes to stderr, keeping stdout to the events."""
        print(f"tail: {message}", file=self.err, flush=True)


def error_message(response: httpx.Response) -> str:
    """The message of the services' JSON error body, or the body itself."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def follow_until(tail: Tail, stop: asyncio.Event) -> int:
    """Run the tail until it ends by itself or ``stop`` is set."""
    following = asyncio.create_task(tail.run(), name="tail")
    stopping = asyncio.create_task(stop.wait(), name="tail-stop")
    try:
        await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (following, stopping):
            task.cancel()
        await asyncio.gather(following, stopping, return_exceptions=True)
    # What run() does not handle goes up: BrokenPipeError (stdout's reader went away) ends the command quietly in
    # telemetry.cli.main; anything else is a bug, and its traceback should show.
    return 0 if following.cancelled() else following.result()


async def main(options: TailOptions) -> int:
    """``telemetry tail``: follow until Ctrl-C (exit 0), until the server refuses the request (exit 1), or until
    stdout's reader goes away (BrokenPipeError, which the command turns into exit 141)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return await follow_until(Tail(options), stop)
