"""An SSE client for gevent that hands over each event the moment its last line is read.

Locust's ``FastHttpSession.iter_lines`` reads 1 KiB chunks: a small event waits in that buffer until
later events fill it, and the wait would be measured as latency. Here geventhttpclient's response is
read with ``readline(b"\\n")``, which returns as soon as a line is complete in what the socket gave
(its default separator, ``b"\\r\\n"``, would never match an SSE line ending in a bare LF).

``python -m loadtest.sse URL PATTERN...`` prints events as they arrive: a quick look at a stream with
exactly the reader the load test uses.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPSocketPoolResponse

STREAM_PATH = "/v1/stream"
CONNECT_TIMEOUT_S = 5.0
# Longer than the server's keep-alive interval (15 s by default): a silent stream this long is dead.
READ_TIMEOUT_S = 60.0
MAX_ERROR_BODY_BYTES = 2048


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched SSE event; ``id`` is None when the event carried no ``id:`` field."""

    event: str
    data: str
    id: str | None


class EventParser:
    """The WHATWG event-stream interpretation of lines, minus what only a browser needs."""

    def __init__(self) -> None:
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """Take one line without its line ending; returns the event a blank line completes."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        event, data, id_ = self._event or "message", self._data, self._id
        self._event, self._data, self._id = "", [], None
        if not data:
            return None  # e.g. the block holding only the retry hint
        return Event(event=event, data="\n".join(data), id=id_)


class StreamRefused(Exception):
    """The server answered something other than a 200 event stream."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}" if body else f"HTTP {status}")
        self.status = status


def stream_request_uri(base_path: str, patterns: Sequence[str], rate: float | None = None) -> str:
    """``/v1/stream?topic=a&topic=b`` under the base URL's path (a proxy may serve us under a prefix)."""
    query = [("topic", pattern) for pattern in patterns]
    if rate is not None:
        query.append(("rate", f"{rate:g}"))
    return base_path.rstrip("/") + STREAM_PATH + "?" + urlencode(query)


class SseConnection:
    """One open stream. ``close()`` may be called from another greenlet: the reader then stops with an error."""

    def __init__(self, client: HTTPClient, response: HTTPSocketPoolResponse) -> None:
        self._client = client
        self._response = response
        self.parser = EventParser()

    @classmethod
    def open(
        cls, stream_url: str, patterns: Sequence[str], last_event_id: str | None = None, rate: float | None = None
    ) -> SseConnection:
        """Connect and read the response headers; raises ``StreamRefused`` or the socket's error.

        ``rate`` asks the server for at most that many readings per second (it conflates the rest).
        """
        # A client per connection: a stream is never complete, so its socket must not go back to a pool.
        client = HTTPClient.from_url(
            stream_url, connection_timeout=CONNECT_TIMEOUT_S, network_timeout=READ_TIMEOUT_S, concurrency=1
        )
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", "Accept-Encoding": "identity"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        try:
            response = client.get(stream_request_uri(urlsplit(stream_url).path, patterns, rate), headers=headers)
            content_type = response.get("content-type")
            is_sse = isinstance(content_type, str) and content_type.startswith("text/event-stream")
            if response.status_code != 200 or not is_sse:
                body = response.read(MAX_ERROR_BODY_BYTES).decode(errors="replace")
                response.release()
                raise StreamRefused(response.status_code, body)
        except BaseException:
            client.close()
            raise
        return cls(client, response)

    def events(self) -> Iterator[tuple[Event, float]]:
        """Each event with the wall-clock time its last line was read; ends when the server ends the stream."""
        readline, feed = self._response.readline, self.parser.feed
        while True:
            raw = readline(b"\n")
            if not raw:
                return
            event = feed(raw.decode(errors="replace").rstrip("\r\n"))
            if event is not None:
                yield event, time.time()

    def close(self) -> None:
        """Drop the connection (its socket is closed: the server sees the client go)."""
        self._response.release()
        self._client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Print every event of a stream as one JSON line, flushed at once, with the time it was read."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.sse", description=main.__doc__)
    parser.add_argument("url", help="the stream service's base URL, e.g. http://127.0.0.1:8001")
    parser.add_argument("patterns", nargs="+", metavar="PATTERN", help="topic patterns, e.g. 'site1.>'")
    parser.add_argument("--last-event-id", help="resume after this event id")
    args = parser.parse_args(argv)
    try:
        connection = SseConnection.open(args.url, args.patterns, args.last_event_id)
    except StreamRefused as err:
        print(f"refused: {err}", file=sys.stderr)
        return 1
    try:
        for event, received_at in connection.events():
            line = {"id": event.id, "event": event.event, "data": event.data, "received_at": received_at}
            print(json.dumps(line), flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        connection.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
