"""The ``overlay`` command line.

``overlay demo [--out DIR] [--seed N] [--no-plot] [--duration S]`` runs the main demo
(:mod:`overlay.demo`): an 8-node RON-style overlay on the emulated testbed in virtual time,
through a link outage and a loss episode; it prints the paths and failover times and writes a
PNG figure and a JSON lines record.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from overlay import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overlay",
        description="An overlay network whose routing reads each link's live TCP state.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    from overlay.demo import add_arguments

    demo = commands.add_parser(
        "demo",
        help="8-node overlay in virtual time through an outage and a loss episode: paths, "
        "failover times and a figure",
        description="Run a RON-style 8-node overlay (testbeds/topologies/ron8.toml) on the "
        "emulated testbed in virtual time: every site is a tcpstack stack plus an overlay node "
        "in this process. A link on the active mit->ucsd path is cut for 10 s, then the "
        "nl-aros link under the loss-routed nl->aros flow loses 10% of its packets for 10 s. "
        "Prints each flow's path before, during and after each episode and the failover times "
        "(reroute: the source switched away from the affected link; resume: the first message "
        "arrived over the new path), and writes DIR/ron8-demo.jsonl and DIR/ron8-demo.png "
        "(latency and loss over time, path switches as vertical lines).",
    )
    add_arguments(demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from overlay.demo import run_from_args

        return run_from_args(args)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
