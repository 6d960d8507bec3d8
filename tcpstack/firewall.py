"""Keep the host kernel's TCP away from the ports a user-level stack owns on the host's address.

A stack on :class:`~tcpstack.links.pcap.PcapLink` uses the host's own IPv4 address. Every segment
for it reaches the kernel too, and the kernel, having no socket for the port, answers with a RST
about 10 us later, which kills the connection. :class:`FirewallGuard` prevents that in two ways:

* an nftables table of its own, ``inet tcpstack_<stack>_<pid>``, whose input-hook chain drops
  ``ip daddr <address> tcp dport <range>`` arriving on the interface. The input hook sits after the
  packet taps (pcap and AF_PACKET see the packet at the device), so the stack still receives it;
* the range added to ``net.ipv4.ip_local_reserved_ports``, so the kernel never picks one of those
  ports as the ephemeral port of its own connections (the default range 40000-40999 lies inside
  the kernel's ephemeral range 32768-60999).

Both are removed on exit, on error, and on SIGTERM/SIGINT (see :func:`guarded`). A process killed
with SIGKILL cannot clean up; :func:`cleanup_stale` removes tables whose process is gone (the
rule's comment records the process start time, so a reused pid is recognised) and gives their
reserved ports back. A port the kernel already uses on the address (a listening or connected
socket in ``/proc/net/tcp``), or a range another live guard holds, is refused with a clear error.

Namespaces: the guard acts in the network namespace of a :class:`NetNamespace`, by default the
one the calling *thread* is in when it is created (so code inside
``testbeds.netns.entered(ns)`` guards ``ns``). A command run from a thread in another namespace
goes through ``nsenter --net=/proc/self/fd/N`` with a descriptor of the guard's, so it lands there
whatever thread runs it (cleanup after the ``entered`` block has ended included); see
:mod:`tcpstack.hostnet`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import attrs
import trio

from tcpstack.hostnet import (
    HostError,
    NetNamespace,
    format_ports,
    kernel_ports_in_use,
    parse_ports,
    subtract_ports,
)
from tcpstack.privileges import Capability, require

__all__ = [
    "FirewallError",
    "FirewallGuard",
    "GuardRecord",
    "NetNamespace",
    "cleanup_stale",
    "guarded",
    "list_guards",
    "table_name",
]

TABLE_PREFIX: Final = "tcpstack_"
_TABLE_RE: Final = re.compile(r"^tcpstack_([A-Za-z0-9_]*)_(\d+)$")
_RESERVED_SYSCTL: Final = "net.ipv4.ip_local_reserved_ports"
_COMMENT_MAX: Final = 127  # nftables refuses rule comments of 128 characters and more


class FirewallError(HostError):
    """The guard could not be installed or removed; the message says what and why, in one line."""


# ---------------------------------------------------------------------------- processes


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    None if no such process exists."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses; fields after it are plain.
    rest = stat[stat.rfind(")") + 2:].split()
    return int(rest[19])


def table_name(stack_name: str, pid: int | None = None) -> str:
    """``tcpstack_<stack>_<pid>`` with the stack name reduced to what nftables accepts."""
    safe = re.sub(r"[^A-Za-z0-9_]", "_", stack_name)[:32]
    return f"{TABLE_PREFIX}{safe}_{os.getpid() if pid is None else pid}"


@attrs.frozen
class GuardRecord:
    """A guard's table as found in nftables (what ``tcpstack firewall --list`` prints)."""

    table: str
    pid: int
    alive: bool
    interface: str | None
    address: str | None
    ports: range | None
    reserved: tuple[range, ...]
    dropped: int

    def describe(self) -> str:
        ports = "?" if self.ports is None else format_ports([self.ports])
        state = "running" if self.alive else "stale (process gone)"
        return (f"{self.table}  pid {self.pid} {state}  {self.interface or '?'} "
                f"{self.address or '?'} tcp dport {ports}  dropped {self.dropped}")


def _rule_fields(rule: dict[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for expr in rule.get("expr", []):
        if "counter" in expr:
            fields["dropped"] = int(expr["counter"].get("packets", 0))
        match = expr.get("match")
        if not match:
            continue
        left, right = match.get("left", {}), match.get("right")
        if left.get("meta", {}).get("key") == "iifname":
            fields["interface"] = right
        elif left.get("payload", {}).get("field") == "daddr":
            fields["address"] = right
        elif left.get("payload", {}).get("field") == "dport":
            if isinstance(right, dict) and "range" in right:
                fields["ports"] = range(int(right["range"][0]), int(right["range"][1]) + 1)
            elif isinstance(right, int):
                fields["ports"] = range(right, right + 1)
    comment = rule.get("comment", "")
    for item in comment.split():
        key, _, value = item.partition("=")
        if key in ("start", "reserved"):
            fields[key] = value
    return fields


def _nft_json(ns: NetNamespace, *args: str) -> list[dict[str, Any]]:
    out = ns.run(["nft", "-j", *args])
    try:
        items: list[dict[str, Any]] = json.loads(out)["nftables"]
    except (ValueError, KeyError, TypeError) as exc:
        raise FirewallError(f"nft -j {' '.join(args)}: unreadable output") from exc
    return items


def _namespace(netns: NetNamespace | str | None) -> tuple[NetNamespace, bool]:
    """The namespace meant by a ``netns`` argument, and whether the caller must close it."""
    if isinstance(netns, NetNamespace):
        return netns, False
    return (NetNamespace.current() if netns is None else NetNamespace.named(netns)), True


def list_guards(netns: NetNamespace | str | None = None) -> list[GuardRecord]:
    """Every guard table in the namespace: a :class:`NetNamespace`, a name under /run/netns, or
    None for the calling thread's."""
    ns, own = _namespace(netns)
    try:
        records = []
        for item in _nft_json(ns, "list", "tables", "inet"):
            table = item.get("table")
            if not table or not (m := _TABLE_RE.match(table.get("name", ""))):
                continue
            name, pid = table["name"], int(m.group(2))
            fields: dict[str, Any] = {}
            for entry in _nft_json(ns, "list", "table", "inet", name):
                if "rule" in entry:
                    fields.update(_rule_fields(entry["rule"]))
            start = process_start_time(pid)
            alive = start is not None and str(start) == fields.get("start", str(start))
            try:
                reserved = tuple(parse_ports(fields.get("reserved", "")))
            except ValueError:
                reserved = ()
            records.append(GuardRecord(
                table=name, pid=pid, alive=alive, interface=fields.get("interface"),
                address=fields.get("address"), ports=fields.get("ports"), reserved=reserved,
                dropped=fields.get("dropped", 0),
            ))
        return records
    finally:
        if own:
            ns.close()


def _release_reserved(ns: NetNamespace, ranges: Sequence[range]) -> None:
    if not ranges:
        return
    current = parse_ports(ns.read("/proc/sys/net/ipv4/ip_local_reserved_ports"))
    ns.run(["sysctl", "-q", "-w", f"{_RESERVED_SYSCTL}={format_ports(subtract_ports(current, ranges))}"])


def cleanup_stale(netns: NetNamespace | str | None = None) -> list[GuardRecord]:
    """Remove the tables (and reserved ports) of guards whose process is gone; return them.
    ``netns`` as for :func:`list_guards`."""
    ns, own = _namespace(netns)
    try:
        removed = []
        for record in list_guards(ns):
            if record.alive:
                continue
            ns.run(["nft", "delete", "table", "inet", record.table])
            _release_reserved(ns, record.reserved)
            removed.append(record)
        return removed
    finally:
        if own:
            ns.close()


# ---------------------------------------------------------------------------- the guard

_tables_in_use: set[str] = set()


class FirewallGuard:
    """One stack's nftables table and port reservation; :meth:`install`, then :meth:`remove`.

    ``netns`` is where it acts: a :class:`NetNamespace` (the caller closes it), a namespace name,
    or None for the namespace of the thread creating the guard.

    Both are synchronous and idempotent; a failed :meth:`install` leaves nothing behind. Use it
    as a context manager, or through :func:`guarded` under trio to survive SIGTERM too.
    """

    def __init__(
        self, interface: str, address: str, ports: range, *, name: str = "stack",
        netns: NetNamespace | str | None = None,
    ) -> None:
        if not interface or any(c in interface for c in '"\\/ \n') or len(interface) > 15:
            raise ValueError(f"not an interface name: {interface!r}")
        ipaddress.IPv4Address(address)  # ValueError names the bad address
        if len(ports) == 0 or ports.step != 1 or ports.start < 1 or ports[-1] > 65535:
            raise ValueError(f"ports must be a non-empty step-1 range within 1..65535, got {ports}")
        self.interface = interface
        self.address = address
        self.ports = ports
        # Two guards of one process must not share a table: removing one would remove both.
        base, n = name, 1
        while table_name(name) in _tables_in_use:
            n += 1
            name = f"{base}_{n}"
        self.table = table_name(name)
        _tables_in_use.add(self.table)
        # The calling thread's namespace, a name under /run/netns, or a handle the caller keeps.
        self.netns, self._owns_ns = _namespace(netns)
        self.installed = False
        self._reserved_added: list[range] = []

    def _check_clashes(self) -> None:
        ns = self.netns
        for path, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
            try:
                text = ns.read(path)
            except (OSError, HostError):
                if v6:
                    continue  # IPv6 disabled
                raise
            used = kernel_ports_in_use(text, self.address, self.ports, ipv6=v6)
            if used:
                port, state = used[0]
                more = f" (and {len(used) - 1} more)" if len(used) > 1 else ""
                raise FirewallError(
                    f"port {port} on {self.address} is in use by a kernel socket ({state}){more}; "
                    f"choose a port range other than {format_ports([self.ports])}"
                )
        for record in list_guards(ns):
            if record.ports is None or record.address != self.address:
                continue
            if record.ports.start <= self.ports[-1] and self.ports.start <= record.ports[-1]:
                hint = "" if record.alive else " (stale: run 'tcpstack firewall --cleanup')"
                raise FirewallError(
                    f"ports {format_ports([record.ports])} on {self.address} are held by "
                    f"{record.table}{hint}; choose another range"
                )

    @trio.lowlevel.enable_ki_protection
    def install(self) -> None:
        """Check for clashes, then install the table and reserve the range (all or nothing).

        Protected from KeyboardInterrupt under trio: Ctrl-C cannot land between the table going
        in and the guard knowing it has to take it out.
        """
        if self.installed:
            return
        try:
            self._install()
        except BaseException:
            if not self.installed:
                self.remove()  # releases the table name (and a namespace we opened)
            raise

    def _install(self) -> None:
        require({Capability.CAP_NET_ADMIN: "the firewall guard (nftables, ip_local_reserved_ports)"},
                ambient=[Capability.CAP_NET_ADMIN])
        ns = self.netns
        self._check_clashes()
        current = parse_ports(ns.read("/proc/sys/net/ipv4/ip_local_reserved_ports"))
        # Only the part not reserved already is ours to add and, later, to give back.
        added = subtract_ports([self.ports], current)
        comment = f"start={process_start_time(os.getpid())} reserved={format_ports(added) or '-'}"
        if len(comment) > _COMMENT_MAX:
            raise FirewallError(
                f"ports {format_ports([self.ports])} are partly reserved already in too many "
                "pieces; choose a range that is free or wholly reserved"
            )
        first, last = self.ports.start, self.ports[-1]
        dport = str(first) if first == last else f"{first}-{last}"
        # One transaction: all of it or nothing. "create" fails if the table exists (a table of
        # a dead process whose pid we reuse), where "add" would merge our rule into it.
        try:
            ns.run(["nft", "-f", "-"], input=(
                f"create table inet {self.table}\n"
                # Before the filter priority, so an accept-all filter chain of the host's own does
                # not matter; pcap/AF_PACKET taps see the packet before any netfilter hook.
                f"add chain inet {self.table} input {{ type filter hook input "
                "priority filter - 10; policy accept; }\n"
                f'add rule inet {self.table} input iifname "{self.interface}" '
                f'ip daddr {self.address} tcp dport {dport} counter drop comment "{comment}"\n'
            ))
        except HostError as exc:
            if "File exists" in str(exc):
                raise FirewallError(
                    f"nftables table {self.table} exists already (left by a dead process with "
                    "this pid?); run 'tcpstack firewall --cleanup'"
                ) from exc
            raise
        self.installed = True
        try:
            if added:
                ns.run(["sysctl", "-q", "-w",
                        f"{_RESERVED_SYSCTL}={format_ports([*current, *added])}"])
                self._reserved_added = added
        except BaseException:
            self.remove()
            raise

    def dropped(self) -> int:
        """Packets the guard has kept from the kernel so far (the rule's counter)."""
        for entry in _nft_json(self.netns, "list", "table", "inet", self.table):
            if "rule" in entry:
                return int(_rule_fields(entry["rule"]).get("dropped", 0))
        return 0

    @trio.lowlevel.enable_ki_protection
    def remove(self) -> None:
        """Delete the table and give the reserved ports back; safe to call more than once.

        Protected from KeyboardInterrupt under trio, so a second Ctrl-C does not leave a table.
        """
        if not self.installed:
            _tables_in_use.discard(self.table)
            self._close_ns()
            return
        errors: list[str] = []
        try:
            self.netns.run(["nft", "delete", "table", "inet", self.table])
        except HostError as exc:
            if "No such file or directory" not in str(exc):  # already gone: fine
                errors.append(str(exc))
        try:
            _release_reserved(self.netns, self._reserved_added)
            self._reserved_added = []
        except (HostError, OSError) as exc:
            errors.append(str(exc))
        self.installed = False
        _tables_in_use.discard(self.table)
        self._close_ns()
        if errors:
            raise FirewallError("; ".join(errors))

    def _close_ns(self) -> None:
        if self._owns_ns:
            self.netns.close()

    def __enter__(self) -> FirewallGuard:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (f"FirewallGuard({self.table}: {self.interface} {self.address} "
                f"{format_ports([self.ports])}, installed={self.installed})")


class TerminatedBySignal(Exception):
    """Raised inside :func:`guarded` when a termination signal arrived; re-delivered after."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


_SIGNALS: Final = (signal.SIGTERM, signal.SIGHUP)


@contextlib.asynccontextmanager
async def guarded(guard: FirewallGuard) -> AsyncIterator[FirewallGuard]:
    """Install ``guard`` for the block; remove it on exit, on error and on a signal.

    SIGINT already unwinds a trio program (KeyboardInterrupt), which runs the removal. SIGTERM and
    SIGHUP would kill the process without unwinding, so a task catches them, cancels the block,
    removes the guard, then re-delivers the signal with the handler that was there before (by
    default that ends the process with the signal, as it would have without us). Signal catching
    needs the main thread; elsewhere only exit and error are covered.
    """
    received: list[int] = []
    try:
        with contextlib.ExitStack() as exits:
            # Catching starts before the guard goes in, so a signal during install is seen too.
            try:
                signals = exits.enter_context(trio.open_signal_receiver(*_SIGNALS))
            except RuntimeError:  # not the main thread
                signals = None
            try:
                guard.install()
                # The receiver outlives the nursery: the watcher must be gone before it closes.
                async with trio.open_nursery() as nursery:
                    if signals is not None:
                        nursery.start_soon(_watch, signals, received)
                    try:
                        yield guard
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                # Inside the receiver's block: a second signal now is queued, not fatal.
                guard.remove()
    finally:
        if received:
            # The handler before ours is back (the receiver restored it): let it act.
            os.kill(os.getpid(), received[0])


async def _watch(signals: AsyncIterator[int], received: list[int]) -> None:
    async for signum in signals:
        received.append(signum)
        raise TerminatedBySignal(signum)
