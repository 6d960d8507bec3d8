"""``tcpstack firewall``: list the firewall guards of running stacks, remove stale ones.

A stack killed with SIGKILL cannot remove its nftables table or give back its reserved ports;
``tcpstack firewall --cleanup`` does, for every table whose process is gone (see
:func:`tcpstack.firewall.cleanup_stale`). Tables of running stacks are never touched.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from tcpstack.firewall import cleanup_stale, list_guards
from tcpstack.hostnet import HostError, NetNamespace
from tcpstack.privileges import Capability, PrivilegeError, require

__all__ = ["add_arguments", "main_from_args", "register"]


SUMMARY = "list or clean up the firewall guards (nftables tables) of PcapLink stacks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Fill the ``firewall`` subcommand's parser."""
    parser.description = (
        "List the nftables tables tcpstack stacks installed to keep the kernel's TCP off their "
        "ports (--list, the default), or remove those whose process is gone and give their "
        "reserved ports back to the kernel (--cleanup)."
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--list", action="store_true", help="list guard tables (the default)")
    action.add_argument("--cleanup", action="store_true",
                        help="remove tables and port reservations left by processes that died")
    parser.add_argument("--netns", metavar="NAME",
                        help="act in the network namespace NAME (/run/netns/NAME)")
    parser.set_defaults(handler=main_from_args)


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``firewall`` subcommand to ``subparsers`` (from ``add_subparsers``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser("firewall", help=SUMMARY)
    add_arguments(parser)
    return parser


def main_from_args(args: argparse.Namespace) -> int:
    """Run the subcommand; errors are one line on stderr and exit status 1."""
    try:
        require({Capability.CAP_NET_ADMIN: "reading and changing nftables tables"},
                ambient=[Capability.CAP_NET_ADMIN])
        ns = NetNamespace.named(args.netns) if args.netns else NetNamespace.current()
        try:
            if args.cleanup:
                removed = cleanup_stale(ns)
                for record in removed:
                    print(f"removed {record.describe()}")
                print(f"{len(removed)} stale table(s) removed")
            else:
                records = list_guards(ns)
                for record in records:
                    print(record.describe())
                if not records:
                    print("no tcpstack firewall tables")
        finally:
            ns.close()
    except (HostError, PrivilegeError, ValueError, OSError) as exc:
        print(f"tcpstack firewall: {exc}", file=sys.stderr)
        return 1
    return 0
