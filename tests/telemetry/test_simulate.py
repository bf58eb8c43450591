"""The device simulator: realistic readings with unique ids, retried unchanged after a 503, counted right."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import sys
from collections.abc import Callable

import httpx
import nats
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from support.auth import SECRET
from support.net import free_port
from support.sse import Serve

from core.readings import Reading
from core.settings import Settings
from ingest.app import create_app
from telemetry.simulate import METRICS, SimulationConfig, Stats, make_devices, post, readings_url, simulate

WAIT_S = 30.0


def test_devices_are_spread_over_sites_and_give_unique_realistic_readings() -> None:
    devices = make_devices(SimulationConfig(url="http://ingest", devices=4, sites=2))
    readings = [reading for device in devices for reading in device.next_readings(50)]

    assert {device.site for device in devices} == {"site-1", "site-2"}
    assert len({reading["id"] for reading in readings}) == len(readings) == 200
    for reading in readings:
        Reading.model_validate(reading)
        device, run, counter = reading["id"].rsplit("-", 2)
        assert device == reading["device"] and len(run) == 6 and counter.isdigit()
    temperatures = [r["value"] for r in readings if r["metric"] == "temperature"]
    humidities = [r["value"] for r in readings if r["metric"] == "humidity"]
    assert len(temperatures) == len(humidities) == 100
    assert all(10 < value < 35 for value in temperatures)
    assert all(20 < value < 80 for value in humidities)
    assert {r["unit"] for r in readings} == {metric.unit for metric in METRICS}


def test_a_bare_service_url_gets_the_readings_path() -> None:
    assert readings_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1/readings"
    assert readings_url("http://127.0.0.1:8000/v1/readings") == "http://127.0.0.1:8000/v1/readings"


class FlakyIngest:
    """Answers 503 with Retry-After to the first requests, then 202 like the ingest service; records all bodies."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[float, bytes, int]] = []
        self.app = FastAPI()
        self.app.post("/v1/readings")(self.post)

    async def post(self, request: Request) -> Response:
        body = await request.body()
        now = asyncio.get_running_loop().time()
        if len(self.requests) < self.failures:
            self.requests.append((now, body, 503))
            return JSONResponse({"error": {"code": "unavailable"}}, status_code=503, headers={"Retry-After": "1"})
        self.requests.append((now, body, 202))
        readings = json.loads(body)
        results = [
            {"topic": f"{r['site']}.{r['device']}.{r['metric']}", "seq": 1, "duplicate": False} for r in readings
        ]
        return JSONResponse({"results": results}, status_code=202)


async def test_a_503_is_retried_after_retry_after_with_the_same_ids(
    serve: Serve,
) -> None:
    ingest = FlakyIngest(failures=1)
    out = io.StringIO()

    async with serve(ingest.app, ready=False) as url:
        config = SimulationConfig(url=url, devices=1, rate=4, batch=2, duration_s=2.0, report_s=60)
        stats = await simulate(config, asyncio.Event(), out)

    (failed_at, failed_body, _), (retried_at, retried_body, status) = ingest.requests[:2]
    assert status == 202
    assert retried_body == failed_body
    assert retried_at - failed_at >= 0.9
    accepted = [json.loads(body) for _, body, status in ingest.requests if status == 202]
    ids = [reading["id"] for batch in accepted for reading in batch]
    assert len(ids) == len(set(ids)) == stats.posted == stats.stored
    assert [int(i.rsplit("-", 1)[1]) for i in ids] == list(range(1, len(ids) + 1))
    assert stats.errors == 1
    assert out.getvalue().startswith("simulate: ") and f"posted {stats.posted} " in out.getvalue()


async def test_readings_reach_the_real_ingest_service_once_each(settings: Settings, serve: Serve) -> None:
    async with serve(create_app(settings)) as url:
        config = SimulationConfig(url=url, devices=3, sites=2, rate=10, batch=2, duration_s=1.5, report_s=60)
        stats = await simulate(config, asyncio.Event(), io.StringIO())

    assert stats.posted > 0
    assert stats.stored == stats.posted
    assert stats.duplicates == stats.errors == 0
    nc = await nats.connect(settings.nats_urls)
    try:
        info = await nc.jetstream().stream_info(settings.stream_name)
    finally:
        await nc.close()
    assert info.state.messages == stats.stored


async def test_the_command_retries_lost_connections_and_stops_cleanly_on_sigint() -> None:
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "telemetry", "simulate", "--url", f"http://127.0.0.1:{free_port()}"],
        *["--devices", "2", "--rate", "5", "--report-s", "0.2"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        lines: list[str] = []
        async with asyncio.timeout(WAIT_S):
            while not any("ConnectError" in line for line in lines):
                lines.append((await process.stdout.readline()).decode())  # type: ignore[union-attr]
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(WAIT_S):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()
    final = stdout.decode().splitlines()[-1]
    assert final.startswith("simulate: ") and "posted 0 " in final
    assert int(final.split("errors ")[1].split()[0]) > 1


async def test_a_batch_sent_again_is_stored_once(settings: Settings, serve: Serve) -> None:
    """What a retry after a lost acknowledgement amounts to: the same ids, counted as duplicates."""
    (device,) = make_devices(SimulationConfig(url="", devices=1))
    body = json.dumps(device.next_readings(3)).encode()
    stats = Stats()

    async with serve(create_app(settings)) as url, httpx.AsyncClient() as client:
        for _ in range(2):
            await post(client, readings_url(url), body, stats, asyncio.Event())

    assert (stats.posted, stats.stored, stats.duplicates, stats.errors) == (6, 3, 3, 0)


async def test_simulate_posts_to_an_ingest_that_requires_auth(
    make_settings: Callable[..., Settings], serve: Serve
) -> None:
    settings = make_settings(auth="required", jwt_secret=SECRET)
    async with serve(create_app(settings)) as url:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "telemetry", "simulate", "--url", url, "--duration-s", "1", "--rate", "5"],
            env={**environment_without_settings(), "TELEMETRY_JWT_SECRET": SECRET},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    nc = await nats.connect(settings.nats_urls)
    try:
        stored = (await nc.jetstream().stream_info(settings.stream_name)).state.messages
    finally:
        await nc.close()
    assert stored > 0, out.decode()
    assert re.search(rb"\b401\b", out) is None, out.decode()  # no 401 answer (a port such as 40165 is no 401)


def environment_without_settings() -> dict[str, str]:
    """This process's environment without any TELEMETRY_* setting of its own."""
    return {name: value for name, value in os.environ.items() if not name.startswith("TELEMETRY_")}
