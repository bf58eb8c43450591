"""``python -m bench.run``: fan-out, idle memory, latency, replay, first paint, page, storm, stuck, auth, scale-out.

Starts a nats-server and the ingest service (on the load generator's CPU), then for each workload
the servers it measures, each pinned to the server CPU with ``taskset``; this process is the load
generator, pinned to the other CPU. Everything started is stopped at the end, also on errors and
Ctrl-C (a second Ctrl-C while stopping is not needed: children are SIGTERMed and reaped in order).

    python -m bench.run                 # the full run (about 15 minutes)
    python -m bench.run --quick         # every workload with small numbers (under a minute)
    python -m bench.run --only fanout,memory --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uvloop

from bench.procs import ChildError, pin_self, raise_fd_limit
from bench.report import Report
from bench.scaleout import PROCESSES
from bench.suite import WORKLOADS, Suite, log
from bench.targets import BENCH_STREAM_SETTINGS, Lab
from telemetry.natsserver import NatsServerError

FULL = {
    "readings": 1000,
    "subscribers": 500,
    "many": 5000,
    "repeats": 3,
    "side_readings": 200,
    "connections": 10000,
    "hold_s": 2.0,
    "sites": 100,
    "devices_per_site": 10,
    "subscribers_per_site": 10,
    "warmup_s": 10.0,
    "duration_s": 60.0,
    "replay_events": 100_000,
    "paint_topics": 10_000,
    "paint_history": 60_000,
    "page_seconds": 30.0,
    "storm_clients": 1000,
    "storm_history": 1000,
    "storm_rate": 100.0,
    "storm_settle_s": 2.0,
    "stuck_clients": 1000,
    "stuck_readers": 10,
    "stuck_readings": 50_000,
    "stuck_reading_bytes": 2048,
    "stuck_rate": 1000.0,
    "scaleout_sites": 100,
    "scaleout_dashboards_per_site": 2,
    "scaleout_rate": 4000.0,
    "scaleout_warmup_s": 5.0,
    "scaleout_seconds": 30.0,
}
QUICK = {
    "readings": 100,
    "subscribers": 50,
    "many": 200,
    "repeats": 1,
    "side_readings": 200,
    "connections": 500,
    "hold_s": 0.5,
    "sites": 10,
    "devices_per_site": 10,
    "subscribers_per_site": 2,
    "warmup_s": 1.0,
    "duration_s": 3.0,
    "replay_events": 5000,
    "paint_topics": 1000,
    "paint_history": 6000,
    "page_seconds": 5.0,
    "storm_clients": 50,
    "storm_history": 200,
    "storm_rate": 100.0,
    "storm_settle_s": 0.5,
    "stuck_clients": 50,
    "stuck_readers": 2,
    "stuck_readings": 2000,
    "stuck_reading_bytes": 2048,
    "stuck_rate": 1000.0,
    "scaleout_sites": 8,
    "scaleout_dashboards_per_site": 2,
    "scaleout_rate": 1000.0,
    "scaleout_warmup_s": 1.0,
    "scaleout_seconds": 3.0,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The flags; every number has a full default and a ``--quick`` one."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers: a smoke run of every workload")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma separated, of {', '.join(WORKLOADS)}")
    parser.add_argument(
        "--references", default="fastapi,sse-starlette,nchan", help="fan-out references besides the ceiling"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU of the measured servers (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU of the load generator, ingest and NATS (1)")
    parser.add_argument(
        "--float-helpers", action="store_true", help="let ingest and nats-server use both CPUs during latency"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the table and raw results here")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the logs and NATS data in /tmp")
    for name, value in FULL.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=type(value), default=None, help=f"default {value}, quick {QUICK[name]}"
        )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    args.references = [name.strip() for name in args.references.split(",") if name.strip()]
    unknown = set(args.only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if args.scaleout_sites < 2 * PROCESSES or args.scaleout_sites % PROCESSES:
        # Each process must serve several sites (one site is one filter, whatever the design) and as many as the others.
        parser.error(f"--scaleout-sites must be a multiple of {PROCESSES}, at least {2 * PROCESSES}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected workloads and print the table; 130 when interrupted (the partial table is printed)."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops everything like Ctrl-C
    raise_fd_limit()
    pin_self(args.load_cpu)
    report = Report()
    workdir = Path(tempfile.mkdtemp(prefix="telemetry-bench-"))
    code = 0
    with contextlib.ExitStack() as stack:
        if not args.keep_workdir:
            stack.callback(shutil.rmtree, workdir, True)
        lab = Lab(stack, workdir, args.server_cpu)
        lifted = ", ".join(f"{name}={value}" for name, value in BENCH_STREAM_SETTINGS.items())
        report.note(
            f"servers on CPU {args.server_cpu}; load generator, ingest and nats-server on CPU {args.load_cpu}; "
            f"stream service limits lifted for the load: {lifted}"
        )
        if args.quick:
            report.note("--quick: small numbers to test the harness; the figures are not the benchmark's")
        if lab.unknown_settings:
            report.note(f"settings the stream service does not know (not set): {', '.join(lab.unknown_settings)}")
        try:
            lab.start_nats()
            uvloop.run(Suite(args, lab, report).all())
        except KeyboardInterrupt:
            log("interrupted: stopping every process started")
            report.note("interrupted: partial results")
            code = 130
        except (ChildError, NatsServerError, OSError) as err:
            log(f"could not run: {err}")
            report.note(f"could not run: {str(err).splitlines()[0]} (log tails on stderr)")
            code = 1
    if args.keep_workdir:
        report.note(f"logs and data kept in {workdir}")
    table = report.render()
    print(table)
    if args.json is not None:
        args.json.write_text(
            json.dumps({"table": table, "rows": [dataclasses.asdict(r) for r in report.rows]}, indent=2)
        )
    return code


if __name__ == "__main__":
    sys.exit(main())
