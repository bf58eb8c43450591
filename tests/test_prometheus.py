"""The chart's dashboard and alerts against a real Prometheus scraping both services under real traffic.

Every panel query and every alert expression is evaluated through Prometheus's HTTP API as Grafana and the rule
evaluator would (Grafana's variables substituted first; an alert's thresholds neutralised, so that the expression
shows what it measures whether or not it fires): each must return data, or a panel is blank and an alert silent
for a wrong name or label. And the end-to-end latency histogram counts exactly the live readings dashboards got.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import ServerSentEvent
from support.monitoring import alert_rules, dashboard, panel_queries
from support.prometheus import SCRAPE_INTERVAL, Prometheus, running_prometheus
from support.server import running
from support.sse import events, seqs, take

from core.settings import Settings
from ingest.app import create_app as create_ingest
from stream.app import create_app as create_stream

BATCHES = 40  # of BATCH_SIZE readings, one every BATCH_EVERY_S: traffic for about 6 scrapes
BATCH_SIZE = 5
BATCH_EVERY_S = 0.15
# Grafana's $__rate_interval: at least four scrape intervals, more as the time range grows; here all the traffic.
RATE_INTERVAL = "10s"
# Grafana's variables and macros, as Grafana would fill them in for the last minutes with every namespace chosen.
GRAFANA_VARIABLES = {
    "$__rate_interval": RATE_INTERVAL,
    "$__interval": SCRAPE_INTERVAL,
    "$__range": "1m",
    "${namespace}": ".*",
    "$namespace": ".*",
}
THRESHOLD = re.compile(r"(?<![=!<>])([<>])(?!=)\s*(-?[0-9][0-9.]*(?:e[+-]?[0-9]+)?)\b")


def grafana_query(expr: str) -> str:
    """A panel's PromQL as Grafana sends it to the datasource."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert not re.search(r"\$(?!\{[0-9]+\})", expr), f"a variable this test does not know: {expr}"  # ${1}: a regex's
    return expr


def neutralised(expr: str) -> str:
    """An alert's expression with each threshold comparison made true for any number (``> N`` to ``> -Inf``)."""
    assert THRESHOLD.search(expr), f"no threshold to compare with: {expr}"
    return THRESHOLD.sub(lambda match: "> -Inf" if match[1] == ">" else "< +Inf", expr)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in alert_rules() for rule in group["rules"] if "alert" in rule]


def test_neutralising_leaves_label_matchers_and_other_comparisons_alone() -> None:
    assert neutralised('sum(rate(x{status=~"5.."}[5m])) / sum(rate(x[5m])) > 0.01') == (
        'sum(rate(x{status=~"5.."}[5m])) / sum(rate(x[5m])) > -Inf'
    )
    assert neutralised("a < 1 or b > 2.5e+06 and c >= 3") == "a < +Inf or b > -Inf and c >= 3"


async def read_all(stream: AsyncIterator[ServerSentEvent], count: int) -> list[int]:
    return seqs(await take(stream, count, timeout_s=60.0))


async def post_readings(ingest_url: str) -> list[int]:
    """BATCHES batches, paced; a malformed body and an invalid reading on the way. Returns the stored sequences."""
    stored: list[int] = []
    async with httpx.AsyncClient() as device:
        bad = await device.post(f"{ingest_url}/v1/readings", content=b"{", headers={"content-type": "application/json"})
        invalid = await device.post(f"{ingest_url}/v1/readings", json={"site": "obs", "device": "d", "value": 1})
        assert (bad.status_code, invalid.status_code) == (400, 422)
        for batch in range(BATCHES):
            readings = [
                {"site": "obs", "device": f"d{i}", "metric": "temperature", "value": batch + i / 10}
                for i in range(BATCH_SIZE)
            ]
            answer = await device.post(f"{ingest_url}/v1/readings", json=readings)
            assert answer.status_code == 202, answer.text
            stored += [result["seq"] for result in answer.json()["results"]]
            await asyncio.sleep(BATCH_EVERY_S)
    return stored


async def test_every_panel_and_alert_returns_data_from_the_real_services(make_settings: Any, tmp_path: Path) -> None:
    settings: Settings = make_settings()
    async with AsyncExitStack() as stack:
        ingest_url = await stack.enter_async_context(running(create_ingest(settings)))
        stream_url = await stack.enter_async_context(running(create_stream(settings)))
        targets = {job: url.removeprefix("http://") for job, url in (("ingest", ingest_url), ("stream", stream_url))}
        prometheus = await stack.enter_async_context(running_prometheus(tmp_path, targets, alert_rules()))
        first = await stack.enter_async_context(events(stream_url, "obs.>"))
        second = await stack.enter_async_context(events(stream_url, "obs.*.temperature"))
        readers = [asyncio.create_task(read_all(stream, BATCHES * BATCH_SIZE)) for stream in (first, second)]
        stored = await post_readings(ingest_url)
        traffic_ended = time.time()
        assert [await reader for reader in readers] == [stored, stored]
        async with events(stream_url, "obs.>", last_event_id=stored[0]) as resumed:  # history: not live
            assert await read_all(resumed, len(stored) - 1) == stored[1:]
        await check_what_dashboards_got(prometheus, live=2 * len(stored), replayed=len(stored) - 1)
        await check_every_panel(prometheus, traffic_ended)
        await check_every_alert(prometheus, traffic_ended)


async def check_what_dashboards_got(prometheus: Prometheus, live: int, replayed: int) -> None:
    """Once scraped, the counters say what the clients got: every live reading in the latency histogram, once."""
    await prometheus.value_becomes('sum(telemetry_stream_events_sent_total{job="stream"})', live + replayed)
    await prometheus.value_becomes("sum(telemetry_stream_replayed_events_total)", replayed)  # the same scrape on:
    assert await prometheus.value("sum(telemetry_stream_end_to_end_latency_seconds_count)") == live
    assert await prometheus.value('sum(telemetry_stream_end_to_end_latency_seconds_bucket{le="+Inf"})') == live
    await prometheus.value_becomes('sum(telemetry_ingest_readings_total{result="stored"})', live / 2)  # its own scrape


async def check_data(prometheus: Prometheus, queries: dict[str, str], at: float) -> None:
    """Each query (by name) returns series at ``at``, none of them NaN (a quantile of no observations, a ratio of
    nothing)."""
    answers = {name: await prometheus.query(expr, at) for name, expr in queries.items()}
    assert [name for name, result in answers.items() if not result] == []
    assert [name for name, result in answers.items() if any(s["value"][1] == "NaN" for s in result)] == []


async def check_every_panel(prometheus: Prometheus, at: float) -> None:
    queries = panel_queries(dashboard())
    assert len(queries) >= 10
    await check_data(prometheus, {f"{title}: {expr}": grafana_query(expr) for title, expr in queries}, at)


async def check_every_alert(prometheus: Prometheus, at: float) -> None:
    rules = alerts()
    assert len(rules) >= 7
    await check_data(prometheus, {rule["alert"]: neutralised(rule["expr"]) for rule in rules}, at)
    loaded = await prometheus.api("rules")
    health = {rule["name"]: rule["health"] for group in loaded["groups"] for rule in group["rules"]}
    assert sorted(health) == sorted(rule["alert"] for rule in rules)
    assert set(health.values()) <= {"ok", "unknown"}  # "unknown" until the first evaluation, "err" on an error
