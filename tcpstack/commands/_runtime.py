"""What every network-facing subcommand shares: link options, opening the link, the control socket.

``--link pcap`` is the seed's design (raw IP socket out, pypcap in, the host's own address, a
firewall guard so the kernel leaves the stack's ports alone); ``--link tun`` puts the stack on its
own address behind a TUN device (offloads on unless ``--no-offload``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

import attrs
import trio

from tcpstack.api import Stack, open_stack
from tcpstack.control import CaptureSwitch, serve_control

__all__ = [
    "CommandError",
    "LinkChoice",
    "add_link_arguments",
    "link_choice",
    "run_command",
    "running_stack",
]

_T = TypeVar("_T")


class CommandError(Exception):
    """A subcommand cannot go on; the message is the one line the user sees."""


def _lone(exc: BaseException) -> BaseException | None:
    """The one exception inside nested single-member exception groups, or None if several."""
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def run_command(async_fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """``trio.run``, with an error raised inside the stack's nurseries re-raised bare.

    trio wraps everything that leaves a nursery in an ExceptionGroup; a subcommand's
    ``except CommandError`` (one line for the user) would never see it, and the user would get
    a traceback instead. A group of several unrelated errors is left as it is.
    """
    try:
        return trio.run(async_fn, *args)
    except BaseExceptionGroup as group:
        lone = _lone(group)
        if lone is None:
            raise
        raise lone from None


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
                       help="no checksum/segmentation offload and no receive coalescing: the "
                       "stack computes and checks every checksum (for comparison, and for "
                       "captures whose checksums are judged)")
    group.add_argument("--backend", choices=("afpacket", "pcap"), default="afpacket",
                       help="pcap: receive with AF_PACKET (default: per-packet checksum status, "
                       "send offload) or pypcap")
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
                                  backend=choice.backend, name=choice.name,
                                  offload=choice.offload) as link:
            yield link
    else:
        from tcpstack.links.tun import open_tun_link

        async with open_tun_link(address=choice.address or "198.18.254.2",
                                 host_address=choice.host_address,
                                 offload=choice.offload) as link:
            yield link


async def _stop_on_signals(scope: trio.CancelScope,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """SIGTERM or SIGHUP ends the command the way Ctrl-C does: cancel the work, close the
    connections gracefully, remove the firewall guard and the control socket, exit."""
    try:
        receiver = trio.open_signal_receiver(signal.SIGTERM, signal.SIGHUP)
        signals = receiver.__enter__()
    except RuntimeError:  # not the main thread: leave signals to whoever owns them
        task_status.started()
        return
    try:
        task_status.started()
        async for signum in signals:
            print(f"tcpstack: {signal.Signals(signum).name}, closing", file=sys.stderr)
            scope.cancel()
            return
    finally:
        receiver.__exit__(None, None, None)


@contextlib.asynccontextmanager
async def running_stack(choice: LinkChoice, **stack_options: Any) -> AsyncIterator[Stack]:
    """Open the chosen link, a stack on it, and its control socket for ``tcpstack ss``/``capture``."""
    async with _open_link(choice) as link:
        switch = CaptureSwitch(link)
        ports = choice.ports if choice.kind == "pcap" else stack_options.pop("ephemeral_ports", None)
        if ports is not None:
            stack_options["ephemeral_ports"] = ports
        async with open_stack(switch, **stack_options) as stack, trio.open_nursery() as nursery:
            await nursery.start(_stop_on_signals, nursery.cancel_scope)
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

