"""The ``tcpstack`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tcpstack import __version__

#: Subcommands living in tcpstack.commands: name -> (one-line help, module).
_COMMANDS = {
    "get": ("HTTP/1.1 GET of a URL over the user-level stack, like curl",
            "tcpstack.commands.get"),
    "serve": ("a static HTTP server on the user-level stack", "tcpstack.commands.serve"),
    "ss": ("connections of every running stack on this host, like ss -ti",
           "tcpstack.commands.ss"),
    "capture": ("record one running stack's packets to a pcap file",
                "tcpstack.commands.capture"),
    "firewall": ("list or clean up the firewall guards of PcapLink stacks",
                 "tcpstack.commands.firewall"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tcpstack",
        description="A user-level TCP/IP stack for Linux that runs under trio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    conformance = commands.add_parser("conformance", help="run packetdrill-dialect scripts")
    conformance_commands = conformance.add_subparsers(dest="conformance_command", required=True)
    from tcpstack.conformance.command import add_arguments as add_conformance_arguments

    add_conformance_arguments(conformance_commands.add_parser("run", help="run scripts"))
    from tcpstack.demo import add_arguments as add_demo_arguments

    add_demo_arguments(commands.add_parser(
        "demo", help="two stacks, an impaired network, one bulk transfer watched live",
        description="Two stacks on an impaired in-memory network; one bulk transfer with a live "
        "line of the sender's cwnd/srtt/retransmits, then TCPInfo, activity accounting and a PNG.",
    ))
    for name, (summary, module) in _COMMANDS.items():
        importlib.import_module(module).add_arguments(
            commands.add_parser(name, help=summary, description=summary)
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command == "conformance":
        from tcpstack.conformance.command import run_from_args

        return run_from_args(args)
    if args.command == "demo":
        from tcpstack.demo import main_from_args

        return main_from_args(args)
    if args.command in _COMMANDS:
        module = importlib.import_module(_COMMANDS[args.command][1])
        return int(module.main_from_args(args))
    parser.error(f"unknown command {args.command!r}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
