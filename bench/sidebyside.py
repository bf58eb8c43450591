"""Servers side by side in lockstep: ``lockstep_side_by_side``, which bench.run's workload ``sidebyside`` uses to
hold the stream service against the ceiling and Nchan; and ``python -m bench.sidebyside BEFORE AFTER``, the
lockstep fan-out cost of two checkouts of the stream service.

Every server runs at once, pinned to the server CPU, each with its own subscribers on ``fan.>``, and every reading
reaches all of them in the same lockstep rounds (section 1's regime: the next POST once every subscriber of every
server has the previous reading), POSTed through the run's ingest service (and the same data to Nchan's publisher
location). Whatever else the machine does during a round, it does to all of them alike. A round's figure for each
server is its CPU over the round divided by its deliveries (no baseline run: all receive the same readings).
Measured one after the other, one server's rounds spread by up to 40 %; side by side, a round's ratio moved by
under 3 % (bench/README.md, section 1 and "Two checkouts side by side").

    python -m bench.sidebyside ../before . --subscribers 5000 --readings 200 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.fanout import FAN_PATTERN, STALL_S, WARMUP_READINGS, Publisher
from bench.load import Group, open_group, stream_request, wait_progress
from bench.procs import pin_self, raise_fd_limit
from bench.report import ratio_of
from bench.targets import Lab, Server


class LostDeliveries(RuntimeError):
    """A side-by-side round in which some subscriber did not get every reading."""


def joined(groups: list[Group]) -> Group:
    """One group of every member of ``groups``: a lockstep round waits for all of them."""
    group = Group()
    for member in (member for part in groups for member in part.members):
        member.group = group
        group.members.append(member)
    return group


async def lockstep_side_by_side(
    servers: dict[str, Server], ingest_port: int, subscribers: int, readings: int, rounds: int
) -> list[dict[str, float]]:
    """Open ``subscribers`` streams on every server, warm up, then ``rounds`` lockstep rounds of ``readings``
    readings to all of them at once; each round's CPU µs per delivery, by server name. Raises LostDeliveries."""
    groups: list[Group] = []
    publisher = Publisher(ingest_port, nchan=False)
    nchans = [Publisher(server.publish_port, nchan=True) for server in servers.values() if server.publish_port]
    try:
        for server in servers.values():
            request = stream_request(server.port, "/v1/stream", [FAN_PATTERN])
            groups.append(await open_group(server.port, request, subscribers, ready_marker=server.ready_marker))
            await server.confirm(subscribers)
        group = joined(groups)
        groups = [group]
        group.arm(WARMUP_READINGS)
        await publisher.publish("lockstep", WARMUP_READINGS, group, nchans)
        figures: list[dict[str, float]] = []
        for index in range(1, rounds + 1):
            cpu_before = {name: server.child.cpu_s() for name, server in servers.items()}
            group.arm(readings)
            await publisher.publish("lockstep", readings, group, nchans)
            await wait_progress(group.total, sum(m.goal for m in group.members), group.all_reached, stall_s=STALL_S)
            if group.missing():
                raise LostDeliveries(f"round {index}: {group.missing()} deliveries lost")
            figures.append(
                {
                    name: (server.child.cpu_s() - cpu_before[name]) / (subscribers * readings) * 1e6
                    for name, server in servers.items()
                }
            )
        return figures
    finally:
        for each in (publisher, *nchans):
            await each.close()
        for group in groups:
            group.close()


async def compare(args: argparse.Namespace, workdir: Path) -> int:
    """Start everything, run the rounds, print each round and the medians; 1 if a reading was lost."""
    with contextlib.ExitStack() as stack:
        lab = Lab(stack, workdir, args.server_cpu)
        lab.start_nats()
        await lab.start_ingest()
        services = {
            name: await lab.start_stream(name=name, checkout=tree)
            for name, tree in (("before", args.before), ("after", args.after))
        }
        try:
            rounds = await lockstep_side_by_side(
                services, lab.ingest_port, args.subscribers, args.readings, args.rounds
            )
        except LostDeliveries as lost:
            print(lost, file=sys.stderr)
            return 1
        ratios = [ratio_of(figures["after"], figures["before"]) for figures in rounds]
        for index, (figures, each) in enumerate(zip(rounds, ratios, strict=True), start=1):
            print(
                f"round {index}: before {figures['before']:.2f} µs/delivery, "
                f"after {figures['after']:.2f}, after/before {each:.3f}"
            )
        before = statistics.median(figures["before"] for figures in rounds)
        after = statistics.median(figures["after"] for figures in rounds)
        print(
            f"median of {args.rounds}: before {before:.2f} µs/delivery, "
            f"after {after:.2f}, after/before {statistics.median(ratios):.3f}"
        )
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("before", type=Path, help="the checkout measured first (its root: telemetry/ in it)")
    parser.add_argument("after", type=Path, help="the checkout compared with it")
    parser.add_argument("--subscribers", type=int, default=5000, help="per service (5000)")
    parser.add_argument("--readings", type=int, default=200, help="per round (200)")
    parser.add_argument("--rounds", type=int, default=5, help="(5)")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU of both services (0)")
    parser.add_argument("--load-cpu", type=int, default=1, help="CPU of the load generator, ingest and NATS (1)")
    args = parser.parse_args()
    for tree in (args.before, args.after):
        if not (tree / "telemetry").is_dir():
            parser.error(f"{tree}: not a checkout of this project (no telemetry/ in it)")
    raise_fd_limit()
    pin_self(args.load_cpu)
    with tempfile.TemporaryDirectory(prefix="bench-sidebyside-") as workdir:
        return uvloop.run(compare(args, Path(workdir)))


if __name__ == "__main__":
    sys.exit(main())
