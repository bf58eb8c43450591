"""The workloads of one benchmark run and the rows they add to the table (bench/README.md describes each).

``Suite`` runs what was selected against one ``Lab`` (NATS and the ingest service for the whole run,
each measured server started fresh for its workload) and turns the results into rows: each figure
beside its reference from the same run, the ratio, and the target with PASS or FAIL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from bench.auth import AUTH_TARGET, RUNS, Comparison, auth_settings, bearer, new_secret, tokens
from bench.fanout import FAN_PATTERN, FanoutResult, Publisher, Regime, fanout
from bench.page import RATE_PER_S, TOPICS, missing, page, page_notes, page_rows
from bench.paint import paint, paint_notes, paint_rows
from bench.procs import INTERFERENCE
from bench.report import Report, Row, ratio_of, times, us
from bench.scaleout import scaleout, scaleout_notes, scaleout_rows
from bench.sidebyside import lockstep_side_by_side
from bench.storm import post_history, storm
from bench.stuck import GONE_WITHIN_S, stuck
from bench.targets import Lab, Server, get_status
from bench.workloads import fill_history, idle_memory, latency, replay
from core.settings import Settings

# In the order they run: lockstep side by side (section 1, where its goals are judged) right after the fan-out;
# first paint (section 9) right after replay, so that its rows stand beside the replay rate,
# then the page (section 10), the other half of what the dashboard costs; the scale-out (section 11) last.
WORKLOADS = (
    "fanout",
    "sidebyside",
    "memory",
    "latency",
    "replay",
    "paint",
    "page",
    "storm",
    "stuck",
    "auth",
    "scaleout",
)
REGIMES: list[Regime] = ["spaced", "lockstep", "burst"]
# Each event alone in its loop turn shows a per-event cost undiluted. Not spaced: its figure is mostly how many events
# happen to share a write, which varied 2x between runs of one service, too loose a measure for a 10 % comparison.
AUTH_REGIMES: list[Regime] = ["lockstep"]
SLOW = {"fastapi"}  # lockstep would take minutes more; spaced and burst are its defined workloads
SPACED_TARGET, BURST_TARGET, STARLETTE_SHARE = 1.5, 0.5, 1 / 3
LOAD_SATURATED = 0.85
MEMORY_TARGET_KB, P99_TARGET_MS, REPLAY_TARGET_PER_S = 15.0, 50.0, 100_000
STUCK_RSS_MARGIN_MIB = 64  # what a stuck-clients run may grow beyond the pending budget (bench/README.md)
MIB = 1 << 20


def log(text: str) -> None:
    """Progress on stderr, so that stdout is the table alone."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class Suite:
    """The workloads of one run, sharing one Lab (NATS, ingest) and one Report."""

    def __init__(self, args: argparse.Namespace, lab: Lab, report: Report) -> None:
        self.args = args
        self.lab = lab
        self.report = report
        self.fan: dict[tuple[str, int, Regime], list[FanoutResult]] = {}

    async def all(self) -> None:
        """Every selected workload in order; one failing workload does not stop the others."""
        await self.lab.start_ingest()
        for name in WORKLOADS:
            if name in self.args.only:
                try:
                    await getattr(self, name)()
                except Exception as err:  # reported in the notes; the other workloads still run
                    log(f"{name} failed: {err!r}")
                    self.report.note(f"{name} failed: {err!r}")

    async def _fanout_one(self, name: str, plan: list[tuple[int, list[Regime]]]) -> None:
        """One server started fresh, measured once for each subscriber count of ``plan`` in its regimes."""
        if name == "nchan" and not self.lab.nchan_available():
            self.report.note("Nchan not installed (apt-get install -y nginx libnginx-mod-nchan): no Nchan rows")
            return
        server = await self._start(name)
        publisher = Publisher(server.publish_port or self.lab.ingest_port, nchan=server.publish_port is not None)
        try:
            for count, regimes in plan:
                log(f"fan-out: {name}, {count} subscribers, {self.args.readings} readings, {', '.join(regimes)} ...")
                for result in await fanout(server, publisher, [count], regimes, self.args.readings, 1):
                    self.fan.setdefault((name, count, result.regime), []).append(result)
                    log(
                        f"  {result.regime}: {us(result.us_per_event)} (lost {result.lost}, lag {result.lag_s:.3f} s, "
                        f"server CPU {result.cpu_s:.2f} s, other work on its CPU {result.other_cpu_s:.2f} s)"
                    )
        except Exception as err:  # a reference that breaks is a note, not the end of the run
            log(f"fan-out of {name} failed: {err!r}")
            self.report.note(f"fan-out of {name} failed: {err!r}")
        finally:
            await publisher.close()
            self.lab.stop(server)

    def _round_plan(self, name: str, round_index: int) -> list[tuple[int, list[Regime]]]:
        """What one interleaved round measures of a server: every regime at ``--subscribers``; at ``--many``,
        lockstep (the goal against Nchan), and the other regimes in the first round, for the ceiling and the stream
        service."""
        small, many = self.args.subscribers, self.args.many
        plan: list[tuple[int, list[Regime]]] = [(small, REGIMES)]
        if many:
            all_regimes = round_index == 0 and name != "nchan"
            plan.append((many, REGIMES if all_regimes else ["lockstep"]))
        return plan

    async def _start(self, name: str) -> Server:
        if name == "stream":
            return await self.lab.start_stream()
        if name == "nchan":
            return await self.lab.start_nchan()
        return await self.lab.start_reference(name)

    def _fan_us(self, name: str, count: int, regime: Regime) -> float:
        results = self.fan.get((name, count, regime), [])
        return statistics.median(r.us_per_event for r in results) if results else float("nan")

    async def fanout(self) -> None:
        """Workload 1: ``--repeats`` rounds, each the ceiling, the stream service and Nchan in turn (interleaved: the
        machine's drift falls on all three), figures their medians; the other references once, at the end."""
        interleaved = ["ceiling", "stream", *(name for name in self.args.references if name == "nchan")]
        try:
            for round_index in range(self.args.repeats):
                for name in interleaved:
                    await self._fanout_one(name, self._round_plan(name, round_index))
            for name in self.args.references:
                if name != "nchan":
                    regimes = [regime for regime in REGIMES if not (regime == "lockstep" and name in SLOW)]
                    await self._fanout_one(name, [(self.args.subscribers, regimes)])
        finally:  # what was measured goes into the table, also when interrupted
            for count in (self.args.subscribers, self.args.many):
                for regime in REGIMES:
                    self._fanout_rows(count, regime)
            for results in self.fan.values():
                for result in results:
                    if result.lost or result.extra or result.post_failures:
                        self.report.note(
                            f"fan-out {result.server} {result.subscribers} {result.regime}: lost {result.lost}, "
                            f"extra {result.extra}, failed posts {result.post_failures}"
                        )
            self._lag_note()
            self._interference_note()

    def _fanout_rows(self, count: int, regime: Regime) -> None:
        ceiling = self._fan_us("ceiling", count, regime)
        label = f"fan-out {regime}, {count} subs"
        if (ceiling_runs := self.fan.get(("ceiling", count, regime))) is None:
            return
        spread = " / ".join(f"{r.us_per_event:.2f}" for r in ceiling_runs)
        target = BURST_TARGET if regime == "burst" else SPACED_TARGET
        stream = self._fan_us("stream", count, regime)
        if ("stream", count, regime) in self.fan:
            row = Row(f"{label}: stream", us(stream), f"ceiling {ceiling:.2f}", times(stream, ceiling))
            if regime != "lockstep":  # lockstep's goals are judged side by side (``sidebyside``), these are reported
                row.target, row.ok = f"≤ {target:g}x ceiling", stream <= target * ceiling
            self.report.add(row)
        starlette = self._fan_us("sse-starlette", count, regime)
        if regime != "burst" and {("stream", count, regime), ("sse-starlette", count, regime)} <= self.fan.keys():
            self.report.add(
                Row(
                    f"{label}: stream vs sse-starlette",
                    us(stream),
                    f"sse-starlette {starlette:.2f}",
                    times(stream, starlette),
                    "≤ 0.33x sse-starlette",
                    stream <= STARLETTE_SHARE * starlette,
                )
            )
        if regime == "lockstep" and {("stream", count, regime), ("nchan", count, regime)} <= self.fan.keys():
            nchan = self._fan_us("nchan", count, regime)
            self.report.add(Row(f"{label}: stream vs Nchan", us(stream), f"nchan {nchan:.2f}", times(stream, nchan)))
        for name in ("fastapi", "sse-starlette", "nchan"):
            if (name, count, regime) in self.fan:
                value = self._fan_us(name, count, regime)
                self.report.add(Row(f"{label}: {name}", us(value), f"ceiling {ceiling:.2f}", times(value, ceiling)))
        self.report.add(Row(f"{label}: ceiling (bare uvloop)", us(ceiling), f"runs {spread}", "1.00x"))

    def _lag_note(self) -> None:
        lagging = [
            f"{name} {count} {regime} {max(r.lag_s for r in results) * 1e3:.0f} ms"
            for (name, count, regime), results in self.fan.items()
            if regime == "spaced" and max(r.lag_s for r in results) > 0.05
        ]
        if lagging:
            self.report.note(
                "spaced: these servers were still delivering after the last 202 (POSTs outpaced the fan-out, "
                "so readings queued and reached the server several per loop turn): " + ", ".join(lagging)
            )

    def _interference_note(self) -> None:
        disturbed = [
            f"{r.server} {r.subscribers} {r.regime} {r.other_cpu_s:.1f} s"
            for results in self.fan.values()
            for r in results
            if r.other_cpu_s > max(0.5, INTERFERENCE * r.cpu_s)
        ]
        if disturbed:
            self.report.note(
                f"CPU {self.args.server_cpu} also ran other work (interrupts, or processes this run did not start) "
                "during: " + ", ".join(disturbed) + "; figures may be disturbed"
            )

    async def sidebyside(self) -> None:
        """Lockstep side by side (section 1): at each subscriber count, the stream service, the ceiling and Nchan
        started together and sent the same ``--side-readings`` readings in ``--repeats`` lockstep rounds; the goals
        of lockstep (≤ 1.5x the ceiling, ≤ Nchan) are judged on these rounds' medians."""
        names = ["stream", "ceiling"]
        if "nchan" in self.args.references:
            if self.lab.nchan_available():
                names.append("nchan")
            else:
                self.report.note("side by side: Nchan not installed, no row against it")
        for count in (count for count in (self.args.subscribers, self.args.many) if count):
            log(f"side by side: {', '.join(names)}, {count} subscribers each, {self.args.repeats} lockstep rounds ...")
            servers: dict[str, Server] = {}
            try:
                for name in names:
                    servers[name] = await self._start(name)
                rounds = await lockstep_side_by_side(
                    servers, self.lab.ingest_port, count, self.args.side_readings, self.args.repeats
                )
            finally:
                for server in servers.values():
                    self.lab.stop(server)
            for figures in rounds:
                log("  " + ", ".join(f"{name} {us(value)}" for name, value in figures.items()))
            self._side_rows(count, rounds)

    def _side_rows(self, count: int, rounds: list[dict[str, float]]) -> None:
        label = f"fan-out lockstep side by side, {count} subs"
        stream = statistics.median(figures["stream"] for figures in rounds)
        ceiling = statistics.median(figures["ceiling"] for figures in rounds)
        self.report.add(
            Row(
                f"{label}: stream vs ceiling",
                us(stream),
                f"ceiling {ceiling:.2f} (runs {side_runs(rounds, 'ceiling')})",
                times(stream, ceiling),
                f"≤ {SPACED_TARGET:g}x ceiling",
                stream <= SPACED_TARGET * ceiling,
            )
        )
        if "nchan" in rounds[0]:
            row = versus_nchan(label, us(stream), stream, statistics.median(figures["nchan"] for figures in rounds))
            row.reference += f" (runs {side_runs(rounds, 'nchan')})"
            self.report.add(row)
        per_round = "; ".join(
            ", ".join(f"{name} {value:.2f}" for name, value in figures.items())
            + ", stream / ceiling "
            + f"{ratio_of(figures['stream'], figures['ceiling']):.3f}"
            for figures in rounds
        )
        self.report.note(
            f"{label}: µs of CPU per delivery by round: {per_round} (medians compared; bench/README.md, section 1)"
        )

    async def ceiling_reference(self) -> str:
        """The ceiling's cost from this run, measured now if the fan-out workload was not selected."""
        count = self.args.subscribers
        if ("ceiling", count, "spaced") not in self.fan:
            await self._fanout_one("ceiling", [(count, REGIMES)])
        return f"ceiling {self._fan_us('ceiling', count, 'spaced'):.2f} µs/event (spaced, {count} subs)"

    async def memory(self) -> None:
        """Workload 2: the stream service, then the ceiling and Nchan, each started fresh."""
        results = {}
        for name in ("stream", "ceiling", "nchan"):
            if name == "nchan" and not self.lab.nchan_available():
                continue
            server = await self._start(name)
            try:
                log(f"memory: {name}, {self.args.connections} idle connections ...")
                results[name] = await idle_memory(server, self.args.connections, self.args.hold_s)
                log(f"  {results[name].kb_per_connection:.1f} KB/connection")
            finally:
                self.lab.stop(server)
        stream = results["stream"].kb_per_connection
        ceiling = results["ceiling"].kb_per_connection if "ceiling" in results else float("nan")
        label = f"idle memory, {self.args.connections} conns"
        reference = f"ceiling {ceiling:.1f}"
        if "nchan" in results:
            reference += f", nchan {results['nchan'].kb_per_connection:.1f}"
        self.report.add(
            Row(
                f"{label}: stream",
                f"{stream:.1f} KB/conn",
                reference,
                times(stream, ceiling),
                f"≤ {MEMORY_TARGET_KB:g} KB",
                stream <= MEMORY_TARGET_KB,
            )
        )
        if "nchan" in results:
            nchan = results["nchan"].kb_per_connection
            self.report.add(versus_nchan(label, f"{stream:.1f} KB/conn", stream, nchan))
        for name in ("ceiling", "nchan"):
            if name in results:
                value = results[name].kb_per_connection
                self.report.add(Row(f"{label}: {name}", f"{value:.1f} KB/conn", "", times(value, ceiling)))

    async def latency(self) -> None:
        """Workload 3: devices through ingest, subscribers per site, on a fresh stream service."""
        args = self.args
        subs = args.sites * args.subscribers_per_site
        devices = args.sites * args.devices_per_site
        helper_cpus = {args.server_cpu, args.load_cpu} if args.float_helpers else {args.load_cpu}
        server = await self.lab.start_stream()
        try:
            log(f"latency: {devices} devices at 1/s, {subs} subscribers, {args.warmup_s:g} s + {args.duration_s:g} s")
            assert self.lab.ingest is not None and self.lab.nats is not None and self.lab.nats.process is not None
            watch = {
                "load generator": os.getpid(),
                "ingest": self.lab.ingest.pid,
                "nats-server": self.lab.nats.process.pid,
                "stream": server.child.pid,
            }
            with self.lab.helpers_on(helper_cpus):
                result = await latency(
                    server,
                    self.lab.ingest_port,
                    sites=args.sites,
                    devices_per_site=args.devices_per_site,
                    subscribers_per_site=args.subscribers_per_site,
                    rate_per_device=1.0,
                    warmup_s=args.warmup_s,
                    duration_s=args.duration_s,
                    watch_pids=watch,
                )
        finally:
            self.lab.stop(server)
        log(f"  p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, lost {result.lost}")
        reference = await self.ceiling_reference()
        label = f"latency, {devices} rdg/s → {subs} subs"
        self.report.add(Row(f"{label}: p50", f"{result.p50_ms:.1f} ms", reference))
        self.report.add(
            Row(
                f"{label}: p99",
                f"{result.p99_ms:.1f} ms",
                reference,
                "",
                f"< {P99_TARGET_MS:g} ms",
                result.p99_ms < P99_TARGET_MS,
            )
        )
        self.report.add(Row(f"{label}: max", f"{result.max_ms:.1f} ms", reference))
        self.report.add(
            Row(
                f"{label}: POST→202 p50/p99",
                f"{result.post_p50_ms:.1f} / {result.post_p99_ms:.1f} ms",
                "(ingest's share)",
            )
        )
        lost = result.lost + result.post_failures
        self.report.add(Row(f"{label}: lost", f"{lost} of {result.expected} events", reference, "", "= 0", lost == 0))
        busy = ", ".join(f"{name} {share:.0%}" for name, share in result.busy.items())
        load_side = sum(share for name, share in result.busy.items() if name != "stream")
        if load_side > LOAD_SATURATED and not args.float_helpers:
            self.report.note(
                f"latency: the load CPU was {load_side:.0%} busy (load generator + ingest + nats-server): the "
                "figures include queueing there, not only in the stream service"
            )
        self.report.note(
            f"latency: {result.readings_posted} readings in the window, {result.deliveries} deliveries, "
            f"{result.post_failures} failed posts; CPU used (share of one CPU): {busy}; ingest and nats-server "
            f"on CPU {','.join(map(str, sorted(helper_cpus)))} (--float-helpers lets them use both)"
        )

    async def replay(self) -> None:
        """Workload 4: history published straight to JetStream, then one resuming client per repeat."""
        count = self.args.replay_events
        log(f"replay: publishing {count} readings to JetStream ...")
        defaults = Settings.model_fields
        stream_name, prefix = defaults["stream_name"].default, defaults["subject_prefix"].default
        first = await fill_history(self.lab.nats_url, stream_name, prefix, count)
        server = await self.lab.start_stream()
        rates, cpu_us = [], []
        try:
            for _ in range(self.args.repeats):
                result = await replay(server, first, count)
                rates.append(result.events_per_s)
                cpu_us.append(result.server_cpu_s / max(1, result.received) * 1e6)
                log(
                    f"  {result.received} events in {result.seconds:.2f} s: {result.events_per_s:,.0f}/s, "
                    f"server CPU {result.server_cpu_s / max(1, result.received) * 1e6:.1f} µs/event"
                )
                if result.received != count:
                    self.report.note(f"replay: received {result.received} of {count} events")
        finally:
            self.lab.stop(server)
        rate = statistics.median(rates)
        self.report.note(
            f"replay: {', '.join(f'{r:,.0f}' for r in rates)} events/s; stream CPU "
            f"{', '.join(f'{c:.1f}' for c in cpu_us)} µs/event (one client, {count} events each time)"
        )
        self.report.add(
            Row(
                f"replay, {count} events",
                f"{rate:,.0f} events/s",
                await self.ceiling_reference(),
                "",
                f"≥ {REPLAY_TARGET_PER_S:,}/s",
                rate >= REPLAY_TARGET_PER_S,
            )
        )

    async def paint(self) -> None:
        """Section 9: time to first paint of a snapshot of many topics and of minutes of history, beside a resume."""
        args = self.args
        log(f"paint: snapshot of {args.paint_topics} topics, {args.paint_history} readings of history, x{args.repeats}")
        result = await paint(self.lab, args.paint_topics, args.paint_history, args.repeats, log)
        for row in paint_rows(result, await self.ceiling_reference()):
            self.report.add(row)
        for note in paint_notes(result, self.args.server_cpu, INTERFERENCE):
            self.report.note(note)

    async def page(self) -> None:
        """Section 10: readings posted through ingest until chromium shows them on the page, beside a raw SSE client."""
        if (reason := missing()) is not None:
            self.report.note(f"page: {reason}: no page rows")
            return
        log(f"page: {RATE_PER_S:g} readings/s on {TOPICS} topics for {self.args.page_seconds:g} s, shown in chromium")
        result = await page(self.lab, self.args.page_seconds, log)
        log(f"  {len(result.shown_ms)} of {len(result.measured)} shown; {'; '.join(result.problems) or 'no problem'}")
        for row in page_rows(result):
            self.report.add(row)
        for note in page_notes(result, self.args.server_cpu):
            self.report.note(note)

    async def storm(self) -> None:
        """Workload 4b: history posted through ingest, then every client resumes it at once under live posts."""
        args = self.args
        site = f"storm{int(time.time())}"
        log(
            f"storm: {args.storm_clients} clients resume {args.storm_history} readings back, {args.storm_rate:g}/s live"
        )
        history = await post_history(self.lab.ingest_port, site, args.storm_history)
        server = await self.lab.start_stream()
        try:
            result = await storm(
                server,
                self.lab.ingest_port,
                site,
                history,
                clients=args.storm_clients,
                rate_per_s=args.storm_rate,
                settle_s=args.storm_settle_s,
            )
        finally:
            self.lab.stop(server)
        deliveries = result.clients * (result.history + result.posted)
        log(
            f"  all live after {result.seconds_to_live:.2f} s; gaps {result.gaps}, duplicates {result.duplicates}; "
            f"stream CPU {result.server_cpu_s / max(1, deliveries) * 1e6:.1f} µs/event"
        )
        label = f"storm, {result.clients} clients resume {result.history} back"
        reference = await self.ceiling_reference()
        live = f"{result.seconds_to_live:.2f} s" + (f" ({result.not_live} never live)" if result.not_live else "")
        self.report.add(Row(f"{label}: all live", live, reference, "", "(report)", result.not_live == 0))
        lost = result.gaps + result.duplicates + result.disordered
        self.report.add(
            Row(
                f"{label}: gaps / duplicates",
                f"{result.gaps} / {result.duplicates}"
                + (f", {result.disordered} out of order" if result.disordered else ""),
                f"{deliveries:,} events",
                "",
                "= 0",
                lost == 0 and not result.ended,
            )
        )
        self.report.note(
            f"storm: {result.posted} readings posted during it ({result.post_failures} failed), "
            f"stream CPU {result.server_cpu_s:.2f} s for {deliveries:,} deliveries"
            + (f"; {len(result.ended)} streams ended early, e.g. {result.ended[0]}" if result.ended else "")
        )

    async def stuck(self) -> None:
        """Workload 6: clients that never read beside readers, large readings through ingest, then silence."""
        args = self.args
        log(
            f"stuck: {args.stuck_clients} clients never read, {args.stuck_readers} readers, "
            f"{args.stuck_readings} readings of {args.stuck_reading_bytes} bytes at {args.stuck_rate:g}/s"
        )
        server = await self.lab.start_stream()
        try:
            result = await stuck(
                server,
                self.lab.ingest_port,
                clients=args.stuck_clients,
                readers=args.stuck_readers,
                readings=args.stuck_readings,
                reading_bytes=args.stuck_reading_bytes,
                rate_per_s=args.stuck_rate,
            )
        finally:
            self.lab.stop(server)
        budget_mib = Settings.model_fields["max_pending_bytes"].default / MIB
        growth_mib = (result.rss_peak_kb - result.rss_before_kb) / 1024
        log(
            f"  stuck gone {result.seconds_to_gone:.1f} s after the last reading; RSS +{growth_mib:.0f} MiB; "
            f"gaps {result.gaps}, duplicates {result.duplicates}"
        )
        label = f"stuck, {result.stuck} + {result.readers} readers, {result.readings} of {result.reading_bytes} B"
        lost = result.gaps + result.duplicates + result.disordered + result.post_failures
        self.report.add(
            Row(
                f"{label}: readers' gaps / duplicates",
                f"{result.gaps} / {result.duplicates}"
                + (f", {result.disordered} out of order" if result.disordered else ""),
                f"{result.readers * result.readings:,} events",
                "",
                "= 0",
                lost == 0 and not result.ended,
            )
        )
        if result.seconds_to_gone < 0:
            gone = f"{-result.seconds_to_gone:.1f} s before the last reading ({result.traffic_s:.0f} s of readings)"
        else:
            gone = f"{result.seconds_to_gone:.1f} s after the last reading"
        if result.still_open:
            gone = f"{result.still_open} still open after {GONE_WITHIN_S:g} s"
        self.report.add(Row(f"{label}: all stuck gone", gone, "", "", "(report)", result.still_open == 0))
        self.report.add(
            Row(
                f"{label}: stream RSS growth",
                f"{growth_mib:.0f} MiB (peak)",
                f"pending budget {budget_mib:g} MiB",
                "",
                f"≤ budget + {STUCK_RSS_MARGIN_MIB} MiB",
                growth_mib <= budget_mib + STUCK_RSS_MARGIN_MIB,
            )
        )
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(result.ended_reasons.items()))
        self.report.note(
            f"stuck: streams ended by the service: {reasons or 'none'}; pending bytes at most "
            f"{result.pending_peak_bytes / MIB:.0f} MiB (sampled); kernel TCP memory at most "
            f"+{result.kernel_tcp_growth_kb / 1024:.0f} MiB (whole machine, clients' sockets too); "
            f"stream CPU {result.server_cpu_s:.1f} s; "
            f"{result.post_failures} readings not stored"
            + (f"; {len(result.ended)} readers ended early, e.g. {result.ended[0]}" if result.ended else "")
        )

    async def auth(self) -> None:
        """Section 8 of bench/README.md: fan-out with auth required against auth off, interleaved, fresh services."""
        count, readings = self.args.subscribers, self.args.readings
        secret = new_secret()
        (credential,) = tokens(secret, 1, subscribe=[FAN_PATTERN])  # one for every subscriber: see bench/README.md
        headers = {"Authorization": bearer(credential)}
        costs = {regime: Comparison([], []) for regime in AUTH_REGIMES}
        results: list[tuple[str, FanoutResult]] = []  # with the run's name, for the notes
        try:
            for run in range(1, RUNS + 1):
                for on in (False, True):
                    log(f"auth: run {run} of {RUNS}, auth {'on' if on else 'off'}, {count} subscribers ...")
                    for result in await self._auth_run(on, secret, headers, count, readings):
                        results.append((f"run {run} auth {'on' if on else 'off'}", result))
                        (costs[result.regime].on if on else costs[result.regime].off).append(result.us_per_event)
                        log(f"  {result.regime}: {us(result.us_per_event)} (lost {result.lost})")
        finally:  # what was measured goes into the table, also when interrupted
            for regime, cost in costs.items():
                self.report.add(
                    Row(
                        f"auth, fan-out {regime}, {count} subs: stream, auth on",
                        us(cost.on_median),
                        f"auth off {cost.off_median:.2f}",
                        f"{cost.ratio:.3f}x",  # three decimals: the row is read against 1.1
                        f"≤ {AUTH_TARGET:g}x auth off",
                        cost.ok,
                    )
                )
                self.report.note(
                    f"auth {regime}: µs/event per run, off {' / '.join(f'{c:.2f}' for c in cost.off)}, "
                    f"on {' / '.join(f'{c:.2f}' for c in cost.on)} (medians of {RUNS} interleaved runs compared)"
                )
            for name, result in results:
                if result.lost or result.extra or result.post_failures:
                    self.report.note(
                        f"auth, {name} {result.regime}: lost {result.lost}, extra {result.extra}, "
                        f"failed posts {result.post_failures}"
                    )
            disturbed = [(name, r) for name, r in results if r.other_cpu_s > max(0.5, INTERFERENCE * r.cpu_s)]
            if disturbed:
                self.report.note(
                    f"auth: CPU {self.args.server_cpu} also ran other work during "
                    + ", ".join(f"{name} {r.regime} {r.other_cpu_s:.1f} s" for name, r in disturbed)
                    + "; figures may be disturbed"
                )

    async def _auth_run(
        self, on: bool, secret: str, headers: dict[str, str], count: int, readings: int
    ) -> list[FanoutResult]:
        """One run of the auth workload on a stream service started for it."""
        if on:
            server = await self.lab.start_stream(auth_settings(secret), name="stream-auth-on")
        else:
            server = await self.lab.start_stream(name="stream-auth-off")
        publisher = Publisher(self.lab.ingest_port, nchan=False)
        try:
            if on and (status := await get_status(server.port, "/v1/stream?topic=fan.%3E")) != 401:
                raise RuntimeError(f"auth is not on: a stream without credentials got {status}, not 401")
            return await fanout(server, publisher, [count], AUTH_REGIMES, readings, 1, headers=headers if on else None)
        finally:
            await publisher.close()
            self.lab.stop(server)

    async def scaleout(self) -> None:
        """Section 11: four stream processes each serving a quarter of the sites: whole-stream feed vs interest."""
        args = self.args
        assert self.lab.ingest is not None and self.lab.nats is not None and self.lab.nats.process is not None
        log(
            f"scale-out: {args.scaleout_sites} sites, {args.scaleout_rate:g} readings/s, "
            f"{args.scaleout_dashboards_per_site} dashboards per site, x{args.repeats} of each design"
        )
        result = await scaleout(
            self.lab,
            sites=args.scaleout_sites,
            dashboards_per_site=args.scaleout_dashboards_per_site,
            rate_per_s=args.scaleout_rate,
            warmup_s=args.scaleout_warmup_s,
            seconds=args.scaleout_seconds,
            rounds=args.repeats,
            load_pids=[os.getpid(), self.lab.ingest.pid, self.lab.nats.process.pid],
            progress=log,
        )
        for row in scaleout_rows(result):
            self.report.add(row)
        for note in scaleout_notes(result, args.server_cpu, INTERFERENCE, LOAD_SATURATED):
            self.report.note(note)


def side_runs(rounds: list[dict[str, float]], name: str) -> str:
    """One server's figure in each side-by-side round, as the table shows runs."""
    return " / ".join(f"{figures[name]:.2f}" for figures in rounds)


def versus_nchan(label: str, figure: str, stream: float, nchan: float) -> Row:
    """Issue 16's goal row: the stream service at or below Nchan (nginx's C module) in the same run."""
    return Row(
        f"{label}: stream vs Nchan",
        figure,
        f"nchan {nchan:.2f}",
        times(stream, nchan),
        "≤ 1.00x Nchan",
        stream <= nchan,
    )
