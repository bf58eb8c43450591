"""A real Prometheus (Debian's package) of one test's own: it scrapes the services under test and evaluates rules."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from support.monitoring import PROMETHEUS, installed
from support.net import READY_DEADLINE_S, free_port

from telemetry.processes import stop_process

SCRAPE_INTERVAL = "1s"
STOP_TIMEOUT_S = 10.0


class Prometheus:
    """The HTTP API of a running Prometheus."""

    def __init__(self, url: str, client: httpx.AsyncClient) -> None:
        self.url = url
        self._client = client

    async def api(self, path: str, **params: Any) -> Any:
        """The ``data`` of a successful API answer; a failed query fails the test with Prometheus's error."""
        answer = await self._client.get(f"{self.url}/api/v1/{path}", params=params)
        body = answer.json()
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector ``expr`` evaluates to (at ``at``, seconds since the epoch; now if None)."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = await self.api("query", **params)
        assert data["resultType"] == "vector", f"{expr}: a {data['resultType']}, not an instant vector"
        result: list[dict[str, Any]] = data["result"]
        return result

    async def value(self, expr: str) -> float | None:
        """The one sample ``expr`` gives now, or None while it gives none."""
        result = await self.query(expr)
        assert len(result) <= 1, f"{expr}: {len(result)} series"
        return float(result[0]["value"][1]) if result else None

    async def value_becomes(self, expr: str, expected: float, timeout_s: float = READY_DEADLINE_S) -> None:
        """Wait until ``expr`` gives ``expected``: what a service counted shows once Prometheus scraped it."""
        last = None
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    last = await self.value(expr)
                    if last == expected:
                        return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"{expr} is {last}, not {expected}, after {timeout_s:g} s") from None


def config(targets: dict[str, str], rule_file: Path) -> dict[str, Any]:
    """A configuration scraping each job's one target (``host:port``) every second and evaluating ``rule_file``."""
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [str(rule_file)],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in targets.items()
        ],
    }


@asynccontextmanager
async def running_prometheus(
    tmp_path: Path, targets: dict[str, str], rules: list[dict[str, Any]]
) -> AsyncIterator[Prometheus]:
    """Prometheus scraping ``targets`` (job name to ``host:port``) with ``rules`` loaded, until the block ends; from
    the moment each target was scraped once."""
    rule_file = tmp_path / "rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": rules}))
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(config(targets, rule_file)))
    port = free_port()
    log = tmp_path / "prometheus.log"
    process = start(config_file, tmp_path / "data", port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            await wait_ready(client, url, process, log)
            prometheus = Prometheus(url, client)
            # Targets are discovered a few seconds after start: from the first scrape on, every second is recorded.
            await prometheus.value_becomes("count(up == 1)", len(targets))
            yield prometheus
    finally:
        stop_process(process, STOP_TIMEOUT_S)


def start(config_file: Path, data: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """The prometheus process, its output in ``log``."""
    with log.open("wb") as output:
        return subprocess.Popen(
            [
                str(installed(PROMETHEUS)),
                f"--config.file={config_file}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def log_text(log: Path) -> str:
    return log.read_text(errors="replace")


async def wait_ready(client: httpx.AsyncClient, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll ``/-/ready`` until Prometheus serves queries; fail with its log if it exits or takes too long."""
    try:
        async with asyncio.timeout(READY_DEADLINE_S):
            while True:
                assert process.poll() is None, f"prometheus exited ({process.returncode}):\n{log_text(log)}"
                try:
                    if (await client.get(f"{url}/-/ready")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"prometheus not ready within {READY_DEADLINE_S:g} s:\n{log_text(log)}") from None
