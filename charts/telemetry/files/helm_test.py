"""`helm test`: post a reading to ingest, then read it back over SSE from stream, resuming just before it.

Runs in the chart's own image (`python -c`; httpx is a dependency of the project). Reads INGEST_URL, STREAM_URL
and TIMEOUT_S from the environment, and with auth required TOKEN_SECRET_FILE (the HS256 secret: a token for this
test's topic is minted by the project's own `core.auth`, with TOKEN_AUDIENCE and TOKEN_ISSUER when set) or
TOKEN_FILE (a token given); exits 0 when the reading came back, 1 otherwise.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

RETRY_S = 1.0
SITE = "helm-test"


def auth_headers(ttl_s: float) -> dict[str, str]:
    """The bearer token the services want when auth is required; none when neither variable is set (auth off)."""
    token_file, secret_file = os.environ.get("TOKEN_FILE"), os.environ.get("TOKEN_SECRET_FILE")
    if token_file:
        token = Path(token_file).read_text().strip()
    elif secret_file:
        # The services' own minting (the image holds the project): the claims they check, by construction.
        from core.auth import mint_token
        from core.topics import Pattern

        patterns = [Pattern.parse(f"{SITE}.>")]
        token = mint_token(
            Path(secret_file).read_bytes().rstrip(b"\r\n"),
            publish=patterns,
            subscribe=patterns,
            ttl_s=ttl_s + 60,
            audience=os.environ.get("TOKEN_AUDIENCE") or None,
            issuer=os.environ.get("TOKEN_ISSUER") or None,
        )
    else:
        return {}
    return {"Authorization": f"Bearer {token}"}


def post_reading(client: httpx.Client, ingest_url: str, reading: dict[str, object], deadline: float) -> dict[str, Any]:
    """POST the reading until ingest stores it (it answers 503 until connected to NATS); the 202's result."""
    problem = "no attempt"
    while time.monotonic() < deadline:
        try:
            response = client.post(f"{ingest_url}/v1/readings", json=reading)
            if response.status_code == 202:
                result: dict[str, Any] = response.json()["results"][0]
                return result
            problem = f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.TransportError as err:
            problem = f"{type(err).__name__}: {err}"
        time.sleep(RETRY_S)
    raise SystemExit(f"FAIL: ingest did not store the reading: {problem}")


def read_back(client: httpx.Client, stream_url: str, topic: str, seq: int, reading_id: str, deadline: float) -> None:
    """Follow the topic from seq - 1 and return once the event with id seq carries our reading."""
    params = {"topic": topic, "last_event_id": str(seq - 1)}
    problem = "no attempt"
    while time.monotonic() < deadline:
        try:
            with client.stream("GET", f"{stream_url}/v1/stream", params=params) as response:
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code}: {response.read()[:300]!r}"
                else:
                    event_id = ""
                    for line in response.iter_lines():
                        field, _, value = line.partition(":")
                        value = value.removeprefix(" ")
                        if field == "id":
                            event_id = value
                        elif field == "data" and event_id == str(seq):
                            data = json.loads(value)
                            if data.get("id") == reading_id and data.get("seq") == seq:
                                return
                            problem = f"event {seq} is not our reading: {value[:300]}"
                        elif line == "":
                            event_id = ""
                        if time.monotonic() >= deadline:
                            break
                    else:
                        problem = "the stream ended before our reading"
        except httpx.TransportError as err:
            problem = f"{type(err).__name__}: {err}"
        time.sleep(RETRY_S)
    raise SystemExit(f"FAIL: reading {reading_id} (seq {seq}) did not come back over SSE: {problem}")


def main() -> int:
    """Round trip one reading with a unique id through ingest, JetStream and stream."""
    ingest_url = os.environ["INGEST_URL"].rstrip("/")
    stream_url = os.environ["STREAM_URL"].rstrip("/")
    timeout_s = float(os.environ.get("TIMEOUT_S", "60"))
    deadline = time.monotonic() + timeout_s
    reading_id = f"helm-test-{uuid.uuid4().hex}"
    reading: dict[str, object] = {
        "site": SITE,
        "device": "roundtrip",
        "metric": "check",
        "value": 1.0,
        "id": reading_id,
    }
    # Short reads: a quiet stream sends a keep-alive within TELEMETRY_KEEPALIVE_S, and the deadline is checked per line.
    with httpx.Client(timeout=httpx.Timeout(10.0, read=30.0), headers=auth_headers(timeout_s)) as client:
        result = post_reading(client, ingest_url, reading, deadline)
        seq, topic = int(result["seq"]), str(result["topic"])
        print(f"stored {reading_id} as seq {seq} on {topic}", flush=True)
        read_back(client, stream_url, topic, seq, reading_id, deadline)
    print(f"OK: seq {seq} came back over SSE from {stream_url}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
