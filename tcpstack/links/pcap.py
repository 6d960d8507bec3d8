"""The seed's link onto a host's network (Daytona): raw IPv4 socket out, packet capture in.

Transmit: a raw IPv4 socket (``IPPROTO_RAW``, which implies ``IP_HDRINCL``) bound to the
interface; the kernel routes the stack's complete IPv4 packets and resolves MAC addresses.
Receive: a packet capture on the interface with a BPF filter for the stack's address and port
range (plus ICMP errors), its descriptor awaited with ``trio.lowlevel.wait_readable`` and drained
in batches. Two capture backends:

- ``afpacket`` (the default, :class:`~tcpstack.links.afpacket.AfPacketLink`): an ``AF_PACKET``
  socket with the filter compiled to classic BPF. It reads the kernel's per-packet checksum
  status, is fast for jumbo frames, and, on Ethernet, also transmits TCP through a packet socket
  with checksum and segmentation offload (see that module).
- ``pcap``: pypcap in immediate, non-blocking mode, each packet a ``bytes`` copied out of
  libpcap's reused ring; the link strips the link-layer header. It was the issue's design and
  stays selectable; it is not the default because it is strictly weaker: no checksum status
  (so a rule, below, stands in for it), slow for 9000+ byte frames, and no transmit offload.

Checksums: :attr:`PcapLink.checksum_offload` is True (unless opened with ``offload=False``,
below), because the link does the work itself and the stack neither computes nor verifies TCP
checksums on it (as with TunLink):

- sending, the link fills in the TCP checksum of every packet (a raw IPv4 socket fills in only
  the IPv4 header's), or lets the kernel do it (AF_PACKET transmit offload);
- receiving, every packet's IPv4 header checksum is verified, and its TCP (ICMP) checksum is
  verified in software unless the kernel vouches for it. On a veth (or tap, or loopback) with
  offloads on, which is how most testbeds come, a local kernel peer sends CHECKSUM_PARTIAL
  packets (and TSO super-segments larger than the MTU): their checksum field holds only the
  pseudo-header sum, since the data never left memory. The AF_PACKET backend reads
  ``PACKET_AUXDATA``: ``TP_STATUS_CSUMNOTREADY`` (partial) and ``TP_STATUS_CSUM_VALID``
  (verified by the device or kernel) are accepted unverified, everything else is verified.
  libpcap gives no per-packet status, so the ``pcap`` backend verifies every packet and applies
  one documented rule: a TCP packet whose checksum does not verify but whose field equals the
  folded pseudo-header sum of its own addresses and TCP length (and whose IPv4 header verifies)
  is taken as CHECKSUM_PARTIAL from a local sender (:func:`classify_checksums`). Random
  corruption of a packet with a real checksum matches that value with probability 2**-16, the
  same odds by which the TCP checksum itself misses corruption; a sender that wants no such rule
  uses the ``afpacket`` backend. Bad packets are dropped and counted in :class:`PcapStats`.

With ``offload=False`` the stack computes and verifies every checksum, the link still drops
what fails its own check and completes partial checksums before handing them up (as Linux's
``skb_checksum_help``), and there is no coalescing or transmit offload: what a ``PcapTap`` over
the link records then has whole checksums and MTU-sized segments, for captures that are judged.

Receive coalescing (``gro``, on by default): a batch's runs of in-order data segments of one
connection go up as one segment (:mod:`tcpstack.links.gro`), as the kernel's GRO does for a
TUN or veth reader; the engine's cost is per segment.

The stack uses the host's own address, so the host kernel must not answer for the stack's ports:
:func:`open_pcap_link` installs a :class:`~tcpstack.firewall.FirewallGuard` for ``ports`` (see
:mod:`tcpstack.firewall`). The stack must take its ephemeral ports, and any port it listens on,
from ``link.ports``: ``open_stack(link, ephemeral_ports=link.ports)``. Segments to other ports never
reach it (the filter), and the kernel answers them as usual. The address must be one the host
answers ARP for (the interface's own, by default), or replies never come back.

Namespaces: descriptors belong to the network namespace they were opened in.
:func:`open_pcap_link` opens them in ``netns`` (a name under ``/run/netns``) if given, else in the
namespace of the calling thread (so it works inside ``testbeds.netns.entered(ns)``); the firewall
commands run in that same namespace, whatever thread is current when they run.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno
import fcntl
import ipaddress
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Final

import attrs
import trio

from tcpstack.firewall import FirewallGuard, guarded
from tcpstack.hostnet import NetNamespace
from tcpstack.links.base import DEFAULT_BATCH, Link, LinkStats, check_max_packets
from tcpstack.links.offload import (
    ChecksumVerdict,
    classify_checksums,
    coalesce,
    complete_checksum,
    with_tcp_checksum,
)
from tcpstack.privileges import Capability, require

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "DEFAULT_PORTS",
    "InterfaceInfo",
    "LinkSetupError",
    "PcapLink",
    "PcapStats",
    "compile_bpf",
    "default_interface",
    "filter_expression",
    "interface_info",
    "open_pcap_link",
]

DEFAULT_PORTS: Final = range(40000, 41000)
BACKENDS: Final = ("pcap", "afpacket")
#: AF_PACKET: it reads the kernel's per-packet checksum status and is fast for jumbo frames.
DEFAULT_BACKEND: Final = "afpacket"
#: Bytes the capture keeps per packet: a GRO-coalesced segment from a kernel peer can be 64 KiB.
SNAPLEN: Final = 65535 + 18
#: Kernel buffer for captured packets: ~5 ms of a 10 Gbit/s burst; the stack drains it per wake-up.
CAPTURE_BUFFER: Final = 16 << 20
SEND_BUFFER: Final = 4 << 20

_SIOCGIFADDR: Final = 0x8915
_SIOCGIFMTU: Final = 0x8921
_SO_SNDBUFFORCE: Final = 32
_IPV4_MIN: Final = 20
_TCP_MIN: Final = 20
_PROTO_TCP: Final = 6
_TCP_CSUM_IHL5: Final = 20 + 16
_CSUM = struct.Struct("!H")


class LinkSetupError(OSError):
    """The link could not be opened (no such interface, no address, capture refused ...)."""


@attrs.define(slots=True)
class PcapStats:
    """Receive-side counters of a PcapLink beyond :class:`LinkStats` (which counts every drop
    as well). See the module docstring for how checksums are judged."""

    #: Packets whose checksums the link verified in software (the kernel vouched for nothing).
    software_verified: int = 0
    #: Packets the kernel marked checksum-verified (AF_PACKET ``TP_STATUS_CSUM_VALID``).
    device_verified: int = 0
    #: Packets with a partial TCP checksum from a local sender (AF_PACKET
    #: ``TP_STATUS_CSUMNOTREADY``; on the pcap backend, the pseudo-header rule).
    partial: int = 0
    #: Packets dropped because a checksum failed (IPv4 header, TCP or ICMP).
    checksum_dropped: int = 0
    #: Packets dropped because they did not fit the receive buffer (AF_PACKET only).
    truncated: int = 0
    #: Segments merged into the one before them by receive coalescing (see ``gro``).
    coalesced: int = 0


# ---------------------------------------------------------------------------- interface facts


@attrs.frozen
class InterfaceInfo:
    name: str
    index: int
    address: str | None
    mtu: int


def default_interface(route_text: str | None = None) -> str:
    """The interface of the IPv4 default route with the lowest metric (``/proc/net/route`` of
    the calling thread's namespace, or ``route_text``)."""
    if route_text is None:
        with open("/proc/thread-self/net/route", encoding="ascii") as f:
            route_text = f.read()
    best: tuple[int, str] | None = None
    for line in route_text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        iface, destination, flags, metric, mask = fields[0], fields[1], fields[3], fields[6], fields[7]
        try:
            up = int(flags, 16) & 0x1
            is_default = int(destination, 16) == 0 and int(mask, 16) == 0
            rank = int(metric)
        except ValueError:
            continue
        if up and is_default and (best is None or rank < best[0]):
            best = (rank, iface)
    if best is None:
        raise LinkSetupError(errno.ENETUNREACH, "no IPv4 default route: name the interface")
    return best[1]


def interface_info(name: str) -> InterfaceInfo:
    """Index, primary IPv4 address and MTU of ``name`` in the calling thread's namespace."""
    try:
        index = socket.if_nametoindex(name)
    except OSError as exc:
        raise LinkSetupError(errno.ENODEV, f"no network interface {name!r}") from exc
    request = struct.pack("16s16x", name.encode())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        mtu = struct.unpack_from("i", fcntl.ioctl(probe, _SIOCGIFMTU, request), 16)[0]
        try:
            raw = fcntl.ioctl(probe, _SIOCGIFADDR, request)
            address: str | None = socket.inet_ntoa(raw[20:24])
        except OSError:
            address = None
    return InterfaceInfo(name=name, index=index, address=address, mtu=mtu)


def filter_expression(address: str, ports: range) -> str:
    """The capture filter: TCP to ``address`` on ``ports`` and the ICMP errors the stack reads
    (destination unreachable incl. fragmentation needed, source quench, time exceeded)."""
    ipaddress.IPv4Address(address)  # ValueError for a bad address, before it reaches libpcap
    first, last = ports.start, ports[-1]
    return (
        f"ip dst host {address} and ((tcp dst portrange {first}-{last}) or "
        "(icmp[icmptype] == icmp-unreach or icmp[icmptype] == icmp-sourcequench "
        "or icmp[icmptype] == icmp-timxceed))"
    )


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


def compile_bpf(expression: str, *, linktype: int = 12, snaplen: int = SNAPLEN) -> bytes:
    """Compile a pcap filter expression to classic BPF with libpcap; the ``sock_filter`` array.

    ``linktype`` 12 is LINKTYPE_RAW (the packet starts at the IPv4 header, as an ``AF_PACKET``
    ``SOCK_DGRAM`` socket's filter sees it); 1 is Ethernet.
    """
    libname = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    lib = ctypes.CDLL(libname)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    handle = lib.pcap_open_dead(linktype, snaplen)
    if not handle:
        raise LinkSetupError(errno.EINVAL, "libpcap: pcap_open_dead failed")
    program = _BpfProgram()
    try:
        if lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, 0xFFFFFFFF) != 0:
            message = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            raise LinkSetupError(errno.EINVAL, f"bad capture filter {expression!r}: {message}")
        try:
            return ctypes.string_at(program.bf_insns, program.bf_len * ctypes.sizeof(_BpfInsn))
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)


# ---------------------------------------------------------------------------- the links


class PcapLink(Link):
    """Raw IPv4 socket out, pypcap in. Open it with :func:`open_pcap_link`.

    :class:`~tcpstack.links.afpacket.AfPacketLink` replaces the receive side (:meth:`_open_rx`,
    :meth:`_drain`, :meth:`_close_rx`) and keeps the rest.
    """

    def __init__(self, info: InterfaceInfo, address: str, ports: range,
                 netns: NetNamespace | None = None) -> None:
        self.interface = info.name
        self.ifindex = info.index
        self.ports = ports
        self.netns = netns
        self.guard: FirewallGuard | None = None
        self._address = address
        self._mtu = info.mtu
        self._stats = LinkStats()
        #: Receive-side checksum and truncation counters.
        self.rx_stats = PcapStats()
        #: Receive coalescing (:func:`tcpstack.links.offload.coalesce`): runs of in-order data
        #: segments of one connection within a batch go up as one segment (with ``offload``).
        self.gro = True
        #: Checksum offload towards the stack (see :attr:`checksum_offload`). Off, the stack
        #: computes and verifies checksums, and partial checksums are completed here first.
        self.offload = True
        self._closed = False
        self._pending: deque[bytes] = deque()
        self._destinations: dict[bytes, tuple[str, int]] = {}
        #: Packets the transmit socket refused, by errno (EAGAIN/ENOBUFS: buffer full, ...).
        self.send_errors: collections.Counter[int] = collections.Counter()
        tx = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        try:
            # Out of this interface only, whatever the routing table prefers for the address.
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, info.name.encode())
            try:
                tx.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, SEND_BUFFER)
            except OSError:
                tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
            tx.setblocking(False)
        except BaseException:
            tx.close()
            raise
        self._tx = tx
        try:
            self._fd = self._open_rx(info, address, ports)
        except BaseException:
            tx.close()
            raise

    # ---- Link properties
    @property
    def stats(self) -> LinkStats:
        return self._stats

    @property
    def address(self) -> str:
        return self._address

    @property
    def mtu(self) -> int:
        return self._mtu

    @property
    def checksum_offload(self) -> bool:
        # With ``offload`` (the default) the link does the checksum work itself: it fills in
        # the TCP checksum of every packet it sends and verifies, or has the kernel's word
        # for, every packet it hands up (see the module docstring), so the stack does neither.
        return self.offload

    @property
    def closed(self) -> bool:
        return self._closed

    # ---- transmit
    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the link is closed")
        sendto = self._tx.sendto
        destinations = self._destinations
        stats = self._stats
        mtu = self._mtu
        offload = self.offload
        for packet in packets:
            size = len(packet)
            if size < _IPV4_MIN or packet[0] >> 4 != 4 or size > mtu:
                stats.count_dropped(size)
                continue
            if packet[9] == _PROTO_TCP and offload:
                # The stack leaves the TCP checksum to us (checksum_offload); a raw IPv4 socket
                # fills in only the IPv4 header's.
                data = with_tcp_checksum(packet)
                if data is None:
                    stats.count_dropped(size)
                    continue
            else:
                data = packet
            key = packet[16:20]
            dest = destinations.get(key)
            if dest is None:
                if len(destinations) >= 4096:
                    destinations.clear()
                dest = destinations[key] = (socket.inet_ntoa(key), 0)
            try:
                sendto(data, dest)
            except OSError as exc:
                # A full socket buffer, an unreachable next hop, a netfilter drop, an interface
                # gone down: a lost packet, as on a NIC; TCP recovers or times out. Counted by
                # errno so the reason is visible.
                stats.count_dropped(size)
                self.send_errors[exc.errno or 0] += 1
            else:
                stats.packets_sent += 1
                stats.bytes_sent += size

    # ---- receive
    def _open_rx(self, info: InterfaceInfo, address: str, ports: range) -> int:
        """Open the receive side in the current namespace; return the descriptor to await."""
        import pcap  # pypcap; imported here so the rest of tcpstack does not need libpcap

        try:
            handle = pcap.pcap(name=info.name, snaplen=SNAPLEN, promisc=False,
                               immediate=True, buffer_size=CAPTURE_BUFFER)
        except OSError as exc:
            raise LinkSetupError(errno.EPERM, f"pcap on {info.name}: {exc}") from exc
        try:
            # pypcap tries the name as a capture *file* first: a file called like the interface
            # in the current directory would be read instead of the interface.
            if not stat.S_ISSOCK(os.fstat(handle.fileno()).st_mode):
                raise LinkSetupError(
                    errno.EINVAL,
                    f"pypcap opened the file ./{info.name} instead of the interface "
                    f"{info.name}; run from a directory without that file",
                )
            handle.setfilter(filter_expression(address, ports))
            handle.setdirection(pcap.PCAP_D_IN)
            handle.setnonblock(True)
        except BaseException:
            handle.close()
            raise
        self._pcap = handle
        self._header = int(handle.dloff)
        return int(handle.fileno())

    def _drain(self, into: deque[bytes], max_packets: int) -> None:
        """Move what the kernel holds (up to about ``max_packets``) into ``into``; never block.

        Checksums are verified here (pcap carries no per-packet checksum status), with the
        pseudo-header rule for partial ones; failures are dropped and counted.
        """
        readpkts = self._pcap.readpkts
        header = self._header
        rx_stats = self.rx_stats
        stats = self._stats
        # readpkts returns one ring block's packets, each a bytes copy; loop until the ring is
        # empty or a batch is full (a trio wake-up costs ~40 us, a read of an empty ring ~1 us).
        while len(into) < max_packets:
            got = readpkts()
            if not got:
                return
            for _, packet in got:
                if header:
                    packet = packet[header:]
                verdict = classify_checksums(packet, partial_rule=True)
                if verdict is ChecksumVerdict.VALID:
                    rx_stats.software_verified += 1
                elif verdict is ChecksumVerdict.PARTIAL:
                    rx_stats.partial += 1
                    if not self.offload:
                        packet = complete_checksum(packet)
                else:
                    rx_stats.checksum_dropped += 1
                    stats.count_dropped(len(packet))
                    continue
                into.append(packet)

    def capture_stats(self) -> tuple[int, int, int]:
        """libpcap's (received, dropped by the kernel buffer, dropped by the interface)."""
        received, dropped, ifdropped = self._pcap.stats()
        return int(received), int(dropped), int(ifdropped)

    def _close_rx(self) -> None:
        self._pcap.close()

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        check_max_packets(max_packets)
        pending = self._pending
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the link is closed")
            if not pending:
                self._drain(pending, max_packets)
            if pending:
                # Packets stay queued if we are cancelled here; once taken they are returned.
                await trio.lowlevel.checkpoint_if_cancelled()
                n = min(max_packets, len(pending))
                batch = [pending.popleft() for _ in range(n)]
                stats = self._stats
                stats.packets_received += n
                stats.bytes_received += sum(map(len, batch))
                if self.gro and self.offload and n > 1:
                    batch, merged = coalesce(batch)
                    self.rx_stats.coalesced += merged
                # A schedule point on every batch: under sustained load the ring never runs dry,
                # and without it the receive task would starve the application that drains the
                # receive buffer (and so keeps the advertised window open).
                await trio.lowlevel.cancel_shielded_checkpoint()
                return batch
            try:
                await trio.lowlevel.wait_readable(self._fd)
            except (trio.ClosedResourceError, OSError) as exc:
                raise trio.ClosedResourceError("the link is closed") from exc

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._pending.clear()
        try:
            trio.lowlevel.notify_closing(self._fd)
        except (ValueError, OSError):
            pass
        self._close_rx()
        self._tx.close()
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"{type(self).__name__}({self.interface} {self._address} "
                f"ports {self.ports.start}-{self.ports[-1]}, mtu {self._mtu}, {state})")


# ---------------------------------------------------------------------------- opening


def _check_ports(ports: range) -> None:
    if not isinstance(ports, range) or len(ports) == 0 or ports.step != 1:
        raise ValueError(f"ports must be a non-empty range with step 1, got {ports!r}")
    if ports.start < 1 or ports[-1] > 65535:
        raise ValueError(f"ports must lie within 1..65535, got {ports}")


def _open(backend: str, interface: str | None, address: str | None, ports: range,
          ns: NetNamespace, gso: bool) -> PcapLink:
    with ns.entered():
        name = interface or default_interface()
        info = interface_info(name)
        addr = address or info.address
        if addr is None:
            raise LinkSetupError(errno.EADDRNOTAVAIL,
                                 f"{name} has no IPv4 address: give one with address=")
        try:
            ipaddress.IPv4Address(addr)
        except ValueError as exc:
            raise ValueError(f"not an IPv4 address: {addr!r}") from exc
        if backend == "afpacket":
            from tcpstack.links.afpacket import AfPacketLink

            afpacket = AfPacketLink(info, addr, ports, ns)
            afpacket.gso = gso
            return afpacket
        return PcapLink(info, addr, ports, ns)


@asynccontextmanager
async def open_pcap_link(
    interface: str | None = None,
    *,
    address: str | None = None,
    ports: range = DEFAULT_PORTS,
    firewall: bool = True,
    backend: str = DEFAULT_BACKEND,
    name: str = "stack",
    netns: str | None = None,
    offload: bool = True,
    gro: bool = True,
    gso: bool = True,
) -> AsyncIterator[PcapLink]:
    """A link on ``interface`` (default: the default route's) for ``address`` (default: the
    interface's primary IPv4 address) and TCP ``ports``, guarded by the firewall unless
    ``firewall`` is False; ``backend`` "afpacket" (the default) or "pcap" (pypcap).

    ``offload`` False makes the stack compute and verify every checksum (so a ``PcapTap`` over
    the link records whole checksums, as TunLink's ``offload=False`` does), completes partial
    checksums in the link, and turns ``gro`` and ``gso`` off; ``gro``
    False hands every segment up as it arrived (no receive coalescing); ``gso`` False keeps
    the AF_PACKET backend to the raw IPv4 socket for sending (no checksum or segmentation
    offload; the pcap backend never has them).

    ``netns`` names a network namespace (``/run/netns/<netns>``) to open the link and run the
    firewall commands in; None uses the calling thread's namespace. Missing privileges raise
    :class:`~tcpstack.privileges.PrivilegeError` before anything is installed.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    _check_ports(ports)
    needs = {Capability.CAP_NET_RAW: "a raw IPv4 socket and packet capture (PcapLink)"}
    if firewall:
        needs[Capability.CAP_NET_ADMIN] = "the firewall guard (nftables, ip_local_reserved_ports)"
    require(needs, ambient=[Capability.CAP_NET_ADMIN] if firewall else [])
    if netns is not None:
        require({Capability.CAP_SYS_ADMIN: f"entering network namespace {netns!r}"})
    ns = NetNamespace.named(netns) if netns is not None else NetNamespace.current()
    try:
        link = _open(backend, interface, address, ports, ns, gso and offload)
        link.gro = gro
        link.offload = offload
        try:
            if firewall:
                guard = FirewallGuard(link.interface, link.address, ports, name=name, netns=ns)
                async with guarded(guard):
                    link.guard = guard
                    yield link
            else:
                yield link
        finally:
            await link.aclose()
    finally:
        ns.close()
