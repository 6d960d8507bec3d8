"""The ``testbed`` command line.

``testbed run TOPOLOGY.toml [--scenario NAME] [--virtual] [--duration S] [--out DIR] [--seed N]``
runs a topology on the emulated testbed (every node a tcpstack stack plus an overlay node in this
process), prints per flow and episode the path before, during and after each event and the
failover times, and writes JSON lines of every event, path change, link sample and delivery to
``DIR/<topology>-<scenario>.jsonl`` and the result to ``DIR/<topology>-<scenario>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import trio
import trio.testing

from testbeds import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="testbed",
        description="Topologies and testbeds (emulated, network namespaces, deployment) for tcpstack and the overlay.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run a topology's scenario on the emulated testbed and print paths and failover times",
        description="Run every node of TOPOLOGY as a stack and overlay node in this process, "
        "apply the scenario's events, send the topology's flows, and report.",
    )
    run.add_argument("topology", metavar="TOPOLOGY.toml", help="topology file (see testbeds/topologies)")
    run.add_argument("--scenario", default="default", help="event list to apply (default: the top-level events)")
    run.add_argument("--virtual", action="store_true", help="virtual time (trio MockClock): deterministic, as fast as the CPU allows")
    run.add_argument("--duration", type=float, default=None, metavar="S", help="seconds to run (default: the topology's duration)")
    run.add_argument("--out", default=os.path.join("out", "testbed"), metavar="DIR", help="directory for the JSON lines and result (default: out/testbed)")
    run.add_argument("--seed", type=int, default=0, metavar="N", help="seed of impairments, ISNs and jitter (default 0)")
    run.add_argument("--sample-interval", type=float, default=1.0, metavar="S", help="seconds between link samples in the JSON lines (default 1)")
    return parser


def _run(args: argparse.Namespace) -> int:
    from testbeds.emulated import Recorder
    from testbeds.scenario import format_result, run_scenario
    from testbeds.topology import Topology, TopologyError

    try:
        topology = Topology.from_toml(args.topology).with_scenario(args.scenario)
    except TopologyError as exc:
        print(f"testbed: {exc}", file=sys.stderr)
        return 2
    if args.duration is not None and not args.duration > 0:
        print(f"testbed: --duration must be > 0, got {args.duration}", file=sys.stderr)
        return 2
    if args.sample_interval < 0:
        print(f"testbed: --sample-interval must be >= 0, got {args.sample_interval}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        print(f"testbed: cannot create {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stem = os.path.join(args.out, f"{topology.name}-{args.scenario}")
    recorder = Recorder(stem + ".jsonl")

    async def main() -> object:
        return await run_scenario(
            topology, duration=args.duration, seed=args.seed, recorder=recorder,
            sample_interval=args.sample_interval, scenario=args.scenario,
        )

    clock = None
    if args.virtual:
        from testbeds.emulated import seed_trio_scheduler

        clock = trio.testing.MockClock(autojump_threshold=0)
        seed_trio_scheduler(args.seed)
    try:
        result = trio.run(main, clock=clock)
    finally:
        recorder.close()
    from testbeds.scenario import RunResult

    assert isinstance(result, RunResult)
    with open(stem + ".json", "w", encoding="utf-8") as file:
        json.dump(result.to_json(), file, indent=1)
    print(format_result(result))
    print(f"\nwrote {stem}.jsonl ({result.records} records) and {stem}.json")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        return _run(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
