"""What every network-facing subcommand shares: link options, opening the link, the control socket.

``--link pcap`` is the seed's design (raw IP socket out, pypcap in, the host's own address, a
firewall guard so the kernel leaves the stack's ports alone); ``--link tun`` puts the stack on its
own address behind a TUN device (offloads on unless ``--no-offload``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import attrs
import trio

from tcpstack.api import Stack, open_stack
from tcpstack.control import CaptureSwitch, serve_control

__all__ = ["CommandError", "LinkChoice", "add_link_arguments", "link_choice", "running_stack"]


class CommandError(Exception):
    """A subcommand cannot go on; the message is the one line the user sees."""


def _port_range(text: str) -> range:
    m = re.fullmatch(r"(\d+)-(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH, got {text!r}")
    lo, hi = int(m[1]), int(m[2])
    if not 1 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"ports must satisfy 1 <= LOW <= HIGH <= 65535: {text!r}")
    return range(lo, hi + 1)


def add_link_arguments(parser: argparse.ArgumentParser, *, default_ports: str) -> None:
    group = parser.add_argument_group("link")
    group.add_argument("--link", choices=("pcap", "tun"), default="pcap",
                       help="pcap: the host's address, raw socket + pcap + firewall guard "
                       "(default); tun: the stack's own address behind a TUN device")
    group.add_argument("--interface", metavar="IF",
                       help="pcap: interface to use (default: that of the default route)")
    group.add_argument("--address", metavar="A",
                       help="pcap: the host address to use (default: the interface's); "
                       "tun: the stack's address (default 198.18.254.2)")
    group.add_argument("--host-address", metavar="A", default="198.18.254.1",
                       help="tun: the kernel side of the TUN device (default %(default)s)")
    group.add_argument("--ports", type=_port_range, default=_port_range(default_ports),
                       metavar="LOW-HIGH",
                       help="pcap: ports the stack owns and the firewall guard protects "
                       "(default %(default)s)")
    group.add_argument("--no-offload", action="store_true",
                       help="tun: no checksum/segmentation offload (for comparison)")
    group.add_argument("--backend", choices=("pcap", "afpacket"), default="pcap",
                       help="pcap: receive with pypcap (default) or AF_PACKET (jumbo frames)")
    group.add_argument("--name", default=None,
                       help="stack name for `tcpstack ss` and the firewall table "
                       "(default: the subcommand)")


@attrs.frozen
class LinkChoice:
    kind: str
    interface: str | None
    address: str | None
    host_address: str
    ports: range
    offload: bool
    backend: str
    name: str


def link_choice(args: argparse.Namespace, name: str) -> LinkChoice:
    return LinkChoice(args.link, args.interface, args.address, args.host_address, args.ports,
                      not args.no_offload, args.backend, args.name or name)


@contextlib.asynccontextmanager
async def _open_link(choice: LinkChoice) -> AsyncIterator[Any]:
    if choice.kind == "pcap":
        try:
            from tcpstack.links.pcap import open_pcap_link
        except ImportError as exc:  # pragma: no cover - the module ships with the package
            raise CommandError(f"pcap link unavailable: {exc}") from None
        async with open_pcap_link(choice.interface, address=choice.address, ports=choice.ports,
                                  backend=choice.backend, name=choice.name) as link:
            yield link
    else:
        from tcpstack.links.tun import open_tun_link

        async with open_tun_link(address=choice.address or "198.18.254.2",
                                 host_address=choice.host_address,
                                 offload=choice.offload) as link:
            yield link


@contextlib.asynccontextmanager
async def running_stack(choice: LinkChoice, **stack_options: Any) -> AsyncIterator[Stack]:
    """Open the chosen link, a stack on it, and its control socket for ``tcpstack ss``/``capture``."""
    async with _open_link(choice) as link:
        switch = CaptureSwitch(link)
        ports = choice.ports if choice.kind == "pcap" else stack_options.pop("ephemeral_ports", None)
        if ports is not None:
            stack_options["ephemeral_ports"] = ports
        async with open_stack(switch, **stack_options) as stack, trio.open_nursery() as nursery:
            try:
                await nursery.start(partial(serve_control, stack, name=choice.name,
                                            link_kind=choice.kind, switch=switch))
            except OSError as exc:  # e.g. /run not writable: the transfer still works
                print(f"tcpstack: control socket unavailable ({exc.strerror or exc}); "
                      "`tcpstack ss` will not see this stack", file=sys.stderr)
            try:
                yield stack
            finally:
                nursery.cancel_scope.cancel()

