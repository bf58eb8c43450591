"""``python -m bench.sidebyside BEFORE AFTER``: the lockstep fan-out cost of two checkouts of the stream service,
side by side.

For a change to the stream's delivery path. Both services run at once, pinned to the server CPU, each with
its own subscribers on ``fan.>``, and every reading reaches both in the same lockstep rounds (section 1's
regime: the next POST once every subscriber of both has the previous reading), POSTed through the run's
ingest service. Whatever else the machine does during a round, it does to both alike. A round's figure for
each service is its CPU over the round divided by its deliveries (no baseline run: both receive the same
readings), and the ratio is AFTER's over BEFORE's; the medians of the rounds are printed last. Measured one
after the other, one service's rounds spread by up to 40 %; side by side, the ratio moved by under 3 %
(bench/README.md, "Two checkouts side by side").

    python -m bench.sidebyside ../before . --subscribers 5000 --readings 200 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import tempfile
from pathlib import Path

import uvloop

from bench.fanout import FAN_PATTERN, STALL_S, WARMUP_READINGS, Publisher
from bench.load import Group, open_group, stream_request, wait_progress
from bench.procs import pin_self, raise_fd_limit
from bench.targets import Lab


def joined(groups: list[Group]) -> Group:
    """One group of every member of ``groups``: a lockstep round waits for all of them."""
    group = Group()
    for member in (member for part in groups for member in part.members):
        member.group = group
        group.members.append(member)
    return group


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
        requests = [
            (server.port, stream_request(server.port, "/v1/stream", [FAN_PATTERN])) for server in services.values()
        ]
        group = joined([await open_group(port, request, args.subscribers) for port, request in requests])
        publisher = Publisher(lab.ingest_port, nchan=False)
        try:
            group.arm(WARMUP_READINGS)
            await publisher.publish("lockstep", WARMUP_READINGS, group)
            ratios: list[float] = []
            figures: dict[str, list[float]] = {name: [] for name in services}
            for index in range(1, args.rounds + 1):
                before_cpu = {name: server.child.cpu_s() for name, server in services.items()}
                group.arm(args.readings)
                await publisher.publish("lockstep", args.readings, group)
                await wait_progress(group.total, sum(m.goal for m in group.members), group.all_reached, stall_s=STALL_S)
                if group.missing():
                    print(f"round {index}: {group.missing()} deliveries lost", file=sys.stderr)
                    return 1
                for name, server in services.items():
                    used = server.child.cpu_s() - before_cpu[name]
                    figures[name].append(used / (args.subscribers * args.readings) * 1e6)
                # CPU is counted in clock ticks (10 ms): a round too small for one tick has no ratio.
                ratios.append(figures["after"][-1] / figures["before"][-1] if figures["before"][-1] else math.nan)
                print(
                    f"round {index}: before {figures['before'][-1]:.2f} µs/delivery, "
                    f"after {figures['after'][-1]:.2f}, after/before {ratios[-1]:.3f}",
                    flush=True,
                )
            print(
                f"median of {args.rounds}: before {statistics.median(figures['before']):.2f} µs/delivery, "
                f"after {statistics.median(figures['after']):.2f}, after/before {statistics.median(ratios):.3f}"
            )
            return 0
        finally:
            await publisher.close()
            group.close()


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
