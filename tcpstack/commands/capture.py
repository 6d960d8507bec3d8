"""``tcpstack capture``: record one running stack's traffic to a pcap file through PcapTap."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import trio

from tcpstack.control import ControlError, list_sockets, query

__all__ = ["add_arguments", "main_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Ask a running stack (see `tcpstack ss`) to write its packets, both directions, to a pcap "
        "file (LINKTYPE_RAW: Wireshark, tshark and tcpdump read it) for a time or a packet count."
    )
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="pcap file to write")
    parser.add_argument("--pid", type=int, help="the stack's process (default: the only stack)")
    parser.add_argument("--name", help="the stack's name (default: the only stack)")
    parser.add_argument("-d", "--duration", type=float, default=10.0, metavar="S",
                        help="stop after S seconds (default %(default)s)")
    parser.add_argument("-c", "--count", type=int, default=0, metavar="N",
                        help="stop after N packets (default: no limit)")
    parser.add_argument("--dir", type=Path, default=None, help=argparse.SUPPRESS)


def main_from_args(args: argparse.Namespace) -> int:
    sockets = [s for s in list_sockets(args.dir)
               if (args.pid is None or s.pid == args.pid)
               and (args.name is None or s.name == args.name)]
    if not sockets:
        print("tcpstack capture: no running stack matches (see `tcpstack ss`)", file=sys.stderr)
        return 1
    if len(sockets) > 1:
        names = ", ".join(f"{s.name}(pid={s.pid})" for s in sockets)
        print(f"tcpstack capture: several stacks run ({names}); choose one with --pid or --name",
              file=sys.stderr)
        return 1
    target = sockets[0]
    path = str(Path(args.output).resolve())
    request = {"cmd": "capture", "path": path, "duration": args.duration, "count": args.count}
    try:
        reply = trio.run(lambda: query(target.path, request, timeout=args.duration + 10.0))
    except ControlError as exc:
        print(f"tcpstack capture: {exc}", file=sys.stderr)
        return 1
    print(f"tcpstack capture: {reply['packets']} packets of {target.name}(pid={target.pid}) "
          f"written to {path}", file=sys.stderr)
    return 0
