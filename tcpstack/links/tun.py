"""A link over a Linux TUN device, optionally with virtio-net header offloads.

The device (``IFF_TUN | IFF_NO_PI``) carries bare IPv4 packets between the stack and the kernel,
which routes them: the stack has its own address (``address``) behind the device and the kernel's
side of the point-to-point subnet (``host_address``) is its next hop. Nothing needs a firewall
rule, because the kernel never sees the stack's connections as its own. The device is created
in the calling thread's network namespace (so under :func:`testbeds.netns.entered` it lands in
that namespace), configured with pyroute2 (address, MTU, up) with IPv6 off, so that neighbour
discovery and router solicitations never reach the stack, and it disappears when the file
descriptor closes (it is not persistent).

With ``offload=True`` the device is opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD(TUN_F_CSUM
| TUN_F_TSO4)``, and every packet in either direction carries a virtio-net header
(:mod:`tcpstack.wire.vnet`):

- sending, the stack writes no TCP checksum (:attr:`TunLink.checksum_offload` is True); the link
  puts the pseudo-header sum in the field and sets NEEDS_CSUM, and the kernel completes it. A
  segment larger than one MTU (up to :attr:`TunLink.gso_max_size`) goes out as one write with
  ``gso_type`` TCPV4, and the kernel cuts it into MTU-sized segments (TSO done by the kernel's
  GSO, measured ~1.1 GB/s written on this machine kind).
- receiving, the kernel hands over the large segments its own TSO/GSO/GRO produced without
  cutting them (``gso_type`` TCPV4) and with partial checksums (NEEDS_CSUM) or checksums it has
  verified (DATA_VALID); the link passes each up as one packet. A packet with neither flag has a
  complete checksum nobody has verified: the link verifies it in software and drops it if bad,
  so the stack's skipped verification stays sound.

With ``offload=False`` packets are written and read as they are, the stack computes and verifies
every checksum, and nothing larger than the MTU is written.

A :class:`~tcpstack.links.pcap_tap.PcapTap` over an offloading TunLink records what crossed it:
super-segments, and TCP checksums that are partial (received) or zero (sent), which Wireshark
flags as bad; capture with ``offload=False`` where checksums are judged.

Frames that are not IPv4 (an IPv6 packet that slipped through, anything else) are dropped and
counted in :attr:`TunLink.tun_stats` before anything looks at them as IPv4.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import ipaddress
import os
import struct
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Final

import attrs
import trio

from tcpstack.links.base import DEFAULT_BATCH, Link, LinkStats, check_max_packets
from tcpstack.wire.vnet import VNET_HDR_LEN, checksums_ok, plain_head, tcp_offload_head

__all__ = [
    "GSO_MAX_SIZE",
    "TunError",
    "TunFlags",
    "TunLink",
    "TunOffload",
    "TunStats",
    "open_tun_link",
]

# <linux/if_tun.h>: _IOW('T', nr, int) = 1 << 30 | 4 << 16 | ord('T') << 8 | nr.
TUNSETIFF: Final = 0x400454CA
TUNSETOFFLOAD: Final = 0x400454D0
TUNSETVNETHDRSZ: Final = 0x400454D8
TUNSETVNETLE: Final = 0x400454DC

#: The largest IPv4 datagram, and so the largest segment the kernel will cut for us.
GSO_MAX_SIZE: Final = 65535
_READ_SIZE: Final = VNET_HDR_LEN + 65535  # any IPv4 packet fits: reads never truncate
_IFNAMSIZ: Final = 16
_DEFAULT_NAME: Final = "tstun%d"  # the kernel picks the first free number
_MIN_MTU: Final = 68  # RFC 791
_IFREQ = struct.Struct("16sH22x")


class TunFlags(enum.IntFlag):
    """``ifr_flags`` of TUNSETIFF."""

    IFF_TUN = 0x0001
    IFF_NO_PI = 0x1000
    IFF_VNET_HDR = 0x4000


class TunOffload(enum.IntFlag):
    """TUNSETOFFLOAD bits: what the kernel may hand us unsegmented / unchecksummed."""

    TUN_F_CSUM = 0x01
    TUN_F_TSO4 = 0x02


class TunError(OSError):
    """Creating or configuring the TUN device failed; the message says what and why."""


@attrs.define(slots=True)
class TunStats:
    """Counters specific to a TUN link (its :class:`LinkStats` count every drop as well)."""

    #: Frames whose version nibble is not 4, dropped unparsed.
    non_ipv4_dropped: int = 0
    #: Reads whose virtio-net header asked for something an IPv4 stack cannot take (a GSO type
    #: other than TCPv4), or that were too short to hold one.
    vnet_dropped: int = 0
    #: Packets with neither NEEDS_CSUM nor DATA_VALID whose checksum failed the link's check.
    checksum_dropped: int = 0
    #: Packets with neither flag, verified by the link in software.
    software_verified: int = 0
    #: Packets the stack handed over that cannot be sent: larger than the MTU and not a TCP
    #: segment the kernel may cut, or not IPv4/TCP where offload needs it.
    unsendable_dropped: int = 0
    #: Writes the kernel refused (EAGAIN, ENOBUFS, EIO while the device is down, ...).
    write_dropped: int = 0
    #: errno of the last refused write.
    last_write_errno: int = 0
    #: Packets written with a GSO request (the kernel cuts each into MTU-sized segments).
    gso_sent: int = 0
    #: Coalesced (gso_type TCPv4) packets read.
    gso_received: int = 0


class TunLink(Link):
    """Bare IPv4 packets (with a virtio-net header when ``offload``) over a TUN file descriptor.

    Make one with :func:`open_tun_link` or :meth:`open`; the constructor takes an fd that is
    already set up (a TUN device, or in tests any datagram fd that keeps packet boundaries) and
    owns it from then on. ``offload`` says whether each packet carries a virtio-net header.
    """

    def __init__(
        self, fd: int, *, address: str, mtu: int = 1500, offload: bool = True, name: str = "",
        host_address: str | None = None, prefix: int = 30,
    ) -> None:
        if not _MIN_MTU <= mtu <= GSO_MAX_SIZE:
            raise ValueError(f"mtu must be in {_MIN_MTU}..{GSO_MAX_SIZE}, got {mtu}")
        _ipv4("address", address)
        os.set_blocking(fd, False)
        self._fd = fd
        self._address = address
        self._mtu = mtu
        self._offload = offload
        self.name = name
        self.host_address = host_address
        self.prefix = prefix
        self._stats = LinkStats()
        self.tun_stats = TunStats()
        self._closed = False

    # ------------------------------------------------------------------ creation

    @classmethod
    def open(
        cls, *, name: str | None = None, address: str = "198.18.254.2",
        host_address: str = "198.18.254.1", prefix: int = 30, mtu: int = 1500,
        offload: bool = True,
    ) -> TunLink:
        """Create and configure a TUN device in the calling thread's namespace (synchronous).

        Raises ``ValueError`` for bad arguments and :class:`TunError` (an ``OSError``) when the
        kernel refuses, with nothing left behind in either case.
        """
        _check_addresses(address, host_address, prefix)
        if not _MIN_MTU <= mtu <= GSO_MAX_SIZE:
            raise ValueError(f"mtu must be in {_MIN_MTU}..{GSO_MAX_SIZE}, got {mtu}")
        request = _DEFAULT_NAME if name is None else _check_name(name)
        fd, actual = _create_device(request, offload)
        try:
            _configure_device(actual, host_address, prefix, mtu)
            return cls(fd, address=address, mtu=mtu, offload=offload, name=actual,
                       host_address=host_address, prefix=prefix)
        except BaseException:
            os.close(fd)  # a non-persistent device goes away with its last fd
            raise

    # ------------------------------------------------------------------ Link properties

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
    def offload(self) -> bool:
        return self._offload

    @property
    def checksum_offload(self) -> bool:
        # With the virtio-net header the kernel completes our checksums and has completed or
        # verified its own (or the link verifies them); without it the stack does both.
        return self._offload

    @property
    def gso_max_size(self) -> int:
        """The largest TCP/IP packet the stack may hand over for the kernel to segment."""
        return GSO_MAX_SIZE if self._offload else 0

    @property
    def closed(self) -> bool:
        return self._closed

    def fileno(self) -> int:
        if self._closed:
            raise trio.ClosedResourceError("the TUN link is closed")
        return self._fd

    # ------------------------------------------------------------------ receive

    async def receive_batch(self, max_packets: int = DEFAULT_BATCH) -> list[bytes]:
        """As :meth:`Link.receive_batch`; also raises ``trio.BrokenResourceError`` once the
        device is gone (deleted by someone else) or fails to read."""
        check_max_packets(max_packets)
        if self._closed:
            raise trio.ClosedResourceError("the TUN link is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        # Read before waiting: under load the fd is nearly always readable, and a read that
        # finds data saves the epoll registration and wake-up that waiting costs.
        batch = self._drain(max_packets)
        if batch:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return batch
        while True:
            await trio.lowlevel.wait_readable(self._fd)  # ClosedResourceError if closed meanwhile
            batch = self._drain(max_packets)
            if batch:
                return batch

    def _drain(self, max_packets: int) -> list[bytes]:
        """Read until EAGAIN or ``max_packets`` reads (dropped frames included, so a flood of
        junk cannot hold the loop)."""
        fd = self._fd
        read = os.read
        out: list[bytes] = []
        stats = self._stats
        offload = self._offload
        for _ in range(max_packets):
            try:
                data = read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except OSError as exc:
                if self._closed or exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("the TUN link is closed") from exc
                # EBADFD: the device was deleted under us (``ip link del``); the fd then polls
                # readable forever, so waiting again would spin. Packets of this batch are lost
                # with the device.
                reason = ("the TUN device was deleted" if exc.errno == errno.EBADFD
                          else f"reading the TUN device failed: {exc.strerror}")
                raise trio.BrokenResourceError(reason) from exc
            if offload:
                packet = self._accept_offloaded(data)
                if packet is None:
                    continue
            elif not data or data[0] >> 4 != 4:
                self.tun_stats.non_ipv4_dropped += 1
                stats.count_dropped(len(data))
                continue
            else:
                packet = data
            stats.packets_received += 1
            stats.bytes_received += len(packet)
            out.append(packet)
        return out

    def _accept_offloaded(self, data: bytes) -> bytes | None:
        """The IPv4 packet behind a virtio-net header, or None (dropped and counted)."""
        n = len(data)
        if n <= VNET_HDR_LEN:
            self.tun_stats.vnet_dropped += 1
            self._stats.count_dropped(n)
            return None
        if data[VNET_HDR_LEN] >> 4 != 4:
            self.tun_stats.non_ipv4_dropped += 1
            self._stats.count_dropped(n - VNET_HDR_LEN)
            return None
        flags = data[0]
        gso_type = data[1]
        if gso_type:
            if gso_type & 0x7F != 1:  # only TCPV4 (with or without ECN) belongs to IPv4 TCP
                self.tun_stats.vnet_dropped += 1
                self._stats.count_dropped(n - VNET_HDR_LEN)
                return None
            self.tun_stats.gso_received += 1
        packet = data[VNET_HDR_LEN:]
        if not flags & 3:  # neither NEEDS_CSUM nor DATA_VALID: complete but unverified
            self.tun_stats.software_verified += 1
            if not checksums_ok(packet):
                self.tun_stats.checksum_dropped += 1
                self._stats.count_dropped(len(packet))
                return None
        return packet

    # ------------------------------------------------------------------ send

    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TUN link is closed")
        if self._offload:
            self._send_offloaded(packets)
        else:
            self._send_plain(packets)

    def _send_plain(self, packets: Iterable[bytes]) -> None:
        fd = self._fd
        write = os.write
        mtu = self._mtu
        stats = self._stats
        for packet in packets:
            size = len(packet)
            if size > mtu or size == 0 or packet[0] >> 4 != 4:
                self.tun_stats.unsendable_dropped += 1
                stats.count_dropped(size)
                continue
            try:
                write(fd, packet)
            except OSError as exc:
                self._write_failed(exc, size)
                continue
            stats.packets_sent += 1
            stats.bytes_sent += size

    def _send_offloaded(self, packets: Iterable[bytes]) -> None:
        fd = self._fd
        writev = os.writev
        mtu = self._mtu
        stats = self._stats
        tun_stats = self.tun_stats
        for packet in packets:
            size = len(packet)
            try:
                head, rest, gso = tcp_offload_head(packet, mtu)
            except ValueError:
                # Not TCP (the stack sends only TCP today): it goes as it is, checksums
                # complete, if it fits; otherwise the kernel could not take it either.
                if size > mtu or size == 0 or packet[0] >> 4 != 4:
                    tun_stats.unsendable_dropped += 1
                    stats.count_dropped(size)
                    continue
                head, rest, gso = plain_head(), 0, False
            try:
                # The payload is not copied: the kernel gathers header and payload.
                writev(fd, (head, memoryview(packet)[rest:]))
            except OSError as exc:
                self._write_failed(exc, size)
                continue
            if gso:
                tun_stats.gso_sent += 1
            stats.packets_sent += 1
            stats.bytes_sent += size

    def _write_failed(self, exc: OSError, size: int) -> None:
        if exc.errno == errno.EBADF or self._closed:
            raise trio.ClosedResourceError("the TUN link is closed") from exc
        # Like a full NIC ring (EAGAIN, ENOBUFS) or a device that is down (EIO): the packet is
        # lost and TCP recovers it. Any other refusal is counted the same way rather than
        # raised into the stack's output path, and its errno kept for diagnosis.
        self.tun_stats.write_dropped += 1
        self.tun_stats.last_write_errno = exc.errno or 0
        self._stats.count_dropped(size)

    # ------------------------------------------------------------------ close

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self._fd)
            os.close(self._fd)
        await trio.lowlevel.checkpoint()

    def __repr__(self) -> str:
        mode = "offload" if self._offload else "plain"
        return (f"TunLink({self.name or self._fd!r}, {self._address}, mtu={self._mtu}, {mode}"
                f"{', closed' if self._closed else ''})")


@asynccontextmanager
async def open_tun_link(
    *, name: str | None = None, address: str = "198.18.254.2", host_address: str = "198.18.254.1",
    prefix: int = 30, mtu: int = 1500, offload: bool = True,
) -> AsyncIterator[TunLink]:
    """A :class:`TunLink` on a new TUN device for the duration of the block.

    ``address`` is the stack's, ``host_address`` the kernel's end of the device; the kernel
    routes ``address/prefix`` through the device. The device is created in the calling thread's
    namespace with IPv6 off and is deleted on exit. ``name`` defaults to the first free
    ``tstunN``. Give the stack the same MTU (``open_stack(link, mtu=...)``).
    """
    link = TunLink.open(name=name, address=address, host_address=host_address, prefix=prefix,
                        mtu=mtu, offload=offload)
    try:
        yield link
    finally:
        await link.aclose()


# ---------------------------------------------------------------------- device set-up


def _check_name(name: str) -> str:
    if (
        not name or len(name.encode()) >= _IFNAMSIZ or not name.isascii() or "/" in name
        or any(ch.isspace() for ch in name) or name in (".", "..")
    ):
        raise ValueError(f"not a valid interface name: {name!r} (1..15 ASCII characters, no '/' "
                         "or spaces)")
    return name


def _ipv4(what: str, value: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise ValueError(f"{what} must be a dotted-quad IPv4 address, got {value!r}") from None


def _check_addresses(address: str, host_address: str, prefix: int) -> None:
    if not isinstance(prefix, int) or not 1 <= prefix <= 32:
        raise ValueError(f"prefix must be in 1..32, got {prefix!r}")
    stack = _ipv4("address", address)
    host = _ipv4("host_address", host_address)
    if stack == host:
        raise ValueError(f"address and host_address are both {address}")
    network = ipaddress.IPv4Network(f"{host_address}/{prefix}", strict=False)
    if stack not in network:
        raise ValueError(f"address {address} is not in {network}, the device's subnet")
    if prefix <= 30 and (stack in (network.network_address, network.broadcast_address)
                         or host in (network.network_address, network.broadcast_address)):
        raise ValueError(f"{address} and {host_address} must be host addresses of {network}")


def _create_device(name: str, offload: bool) -> tuple[int, str]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TunError(exc.errno, "/dev/net/tun does not exist (no TUN support here)") from exc
    except PermissionError as exc:
        raise TunError(exc.errno, "cannot open /dev/net/tun: needs CAP_NET_ADMIN") from exc
    try:
        flags = TunFlags.IFF_TUN | TunFlags.IFF_NO_PI
        if offload:
            flags |= TunFlags.IFF_VNET_HDR
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), flags))
        except OSError as exc:
            reason = {
                errno.EPERM: "needs CAP_NET_ADMIN",
                errno.EBUSY: "the name is in use by another device",
                errno.EINVAL: "the name is in use by a device of another kind",
            }.get(exc.errno or 0, exc.strerror)
            raise TunError(exc.errno, f"cannot create TUN device {name!r}: {reason}") from exc
        actual = _IFREQ.unpack(answer)[0].rstrip(b"\0").decode()
        if offload:
            try:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_LEN))
                # Little-endian header fields whatever the host: the codec packs "<".
                fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
                fcntl.ioctl(fd, TUNSETOFFLOAD, int(TunOffload.TUN_F_CSUM | TunOffload.TUN_F_TSO4))
            except OSError as exc:
                raise TunError(exc.errno, f"cannot enable offloads on {actual}: {exc.strerror}"
                               ) from exc
        return fd, actual
    except BaseException:
        os.close(fd)
        raise


def _configure_device(name: str, host_address: str, prefix: int, mtu: int) -> None:
    # pyroute2 is imported here: only TUN users need it, and it costs ~0.1 s to import.
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    # Before the device is up, so it never sends router solicitations or takes an IPv6 address.
    # /proc/sys/net resolves to the opening thread's namespace, where the device is. A kernel
    # without IPv6 has no such file, and nothing to turn off.
    disable = f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6"
    if os.path.exists(disable):
        try:
            with open(disable, "w") as knob:
                knob.write("1")
        except OSError as exc:
            raise TunError(exc.errno, f"cannot turn IPv6 off on {name}: {exc.strerror}") from exc
    try:
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise TunError(errno.ENODEV, f"TUN device {name} vanished during set-up")
            index = found[0]
            ipr.link("set", index=index, mtu=mtu)
            ipr.addr("add", index=index, address=host_address, prefixlen=prefix)
            ipr.link("set", index=index, state="up")
    except NetlinkError as exc:
        raise TunError(exc.code, f"cannot configure {name} ({host_address}/{prefix}, mtu {mtu}): "
                       f"{os.strerror(exc.code)}") from exc
