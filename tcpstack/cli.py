"""The ``tcpstack`` command line.

Each subcommand lives in its own module with ``add_arguments(parser)`` and
``main_from_args(args) -> int``. Only the module of the subcommand being run is imported: some
pull in heavy dependencies (the conformance runner imports ``trio.testing``), and a tool users
reach for first should start at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tcpstack import __version__

#: name -> (one-line help, module). ``conformance`` has one sub-subcommand, ``run``.
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
    "demo": ("two stacks, an impaired network, one bulk transfer watched live",
             "tcpstack.demo"),
    "conformance": ("run packetdrill-dialect scripts", "tcpstack.conformance.command"),
}


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The parser; the arguments of subcommand ``wanted`` (all of them if None) are filled in."""
    parser = argparse.ArgumentParser(
        prog="tcpstack",
        description="A user-level TCP/IP stack for Linux that runs under trio.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (summary, module) in _COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=summary)
        if name == "conformance":
            sub = sub.add_subparsers(dest="conformance_command", required=True).add_parser(
                "run", help="run scripts")
        if wanted is None or wanted == name:
            importlib.import_module(module).add_arguments(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wanted = next((arg for arg in argv if not arg.startswith("-")), "")
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(_COMMANDS[args.command][1])
    if args.command == "conformance":
        return int(module.run_from_args(args))
    return int(module.main_from_args(args))


if __name__ == "__main__":
    sys.exit(main())
