"""PcapLink's receive side on a plain ``AF_PACKET`` socket (the default backend).

pypcap is slow for 9000+ byte frames (~74k packets/s at 9000 B on this machine kind); a packet
socket is not, and it tells, per packet, what the kernel knows of the checksum. The socket is ``SOCK_DGRAM`` bound to the interface and
to ``ETH_P_IP``, so the kernel strips the link-layer header and the filter sees the IPv4 header at
offset 0: the same filter expression as the pcap backend
(:func:`~tcpstack.links.pcap.filter_expression`), compiled by libpcap for raw IPv4 and attached
with ``SO_ATTACH_FILTER``. The filter is attached before the socket is bound to a protocol, so no
unfiltered packet is ever queued. Transmit is PcapLink's raw IPv4 socket.

Checksums: ``PACKET_AUXDATA`` is on, so every ``recvmsg`` carries a ``struct tpacket_auxdata``
whose ``tp_status`` says what the kernel knows (``net/packet/af_packet.c``, ``packet_rcv``):

- ``TP_STATUS_CSUMNOTREADY`` (``CHECKSUM_PARTIAL``): a local sender (veth peer, tap, loopback)
  left the transport checksum to an offload that never ran; the data is intact in memory, the
  field holds only the pseudo-header sum. Accepted without a check (counted in
  :attr:`PcapStats.partial`), as Linux's own TCP accepts it.
- ``TP_STATUS_CSUM_VALID`` (``CHECKSUM_UNNECESSARY``, or a verified ``CHECKSUM_COMPLETE``): the
  device or the kernel verified it. Accepted (:attr:`PcapStats.device_verified`).
- neither: nobody checked. The link verifies the TCP/ICMP checksum in software and drops and
  counts a bad one (:attr:`PcapStats.checksum_dropped`).

The IPv4 header checksum (20 octets) is verified in every case: the tap sits before ``ip_rcv``.
So :attr:`PcapLink.checksum_offload` is True and the stack verifies nothing again.

Transmit offload (``gso``, on by default on Ethernet interfaces of little-endian hosts): a second
packet socket (``SOCK_RAW``, protocol 0 so it never receives, ``PACKET_VNET_HDR``) sends TCP with
a virtio-net header (:func:`tcpstack.wire.vnet.tcp_offload_head`, as TunLink does): NEEDS_CSUM,
so the kernel or the device completes the checksum, and for a segment larger than the MTU
``gso_type`` TCPV4, so the kernel cuts it (the device's TSO, or the kernel's software GSO) into
MTU-sized segments; :attr:`AfPacketLink.gso_max_size` is then 64 KiB and the engine builds such
segments. One system call and one pass through the engine carry up to 44 segments: this is what
makes sending fast. The frame's destination is the link-layer address the peer's own packets
came from (learned per peer address on receive, ``PACKET_HOST`` only): the next hop toward the
peer when the path is symmetric, as it is wherever the stack's replies follow the peer's
packets back. A peer never heard from (before its SYN or SYN-ACK arrives) and everything that is
not TCP go through the raw IPv4 socket, which the kernel routes and resolves; a super-segment
for such a peer is cut by the link (:func:`tcpstack.links.offload.segment_tcp`). Packets on the
packet socket skip the host's IP output path (routing, netfilter output hooks) but not the
device's qdisc or the netdev egress hook. Linux cuts GSO segments at ``gso_size`` (the MTU less
the headers), so a capture on the interface shows MTU-sized segments with complete checksums
when ``tx`` offload is off there.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import socket
import struct
import sys
from collections import deque
from collections.abc import Iterable
from typing import Final

import attrs
import trio

from tcpstack.links.offload import complete_checksum, ipv4_header_ok, segment_tcp
from tcpstack.links.pcap import (
    CAPTURE_BUFFER,
    SEND_BUFFER,
    InterfaceInfo,
    LinkSetupError,
    PcapLink,
    compile_bpf,
    filter_expression,
)
from tcpstack.wire.vnet import checksums_ok, tcp_offload_head

__all__ = ["AfPacketLink", "AfPacketTxStats", "attach_filter"]

_ETH_P_IP: Final = 0x0800
_SO_ATTACH_FILTER: Final = 26
_SO_RCVBUFFORCE: Final = 33
_SOL_PACKET: Final = 263
_PACKET_IGNORE_OUTGOING: Final = 23
_PACKET_AUXDATA: Final = 8
_PACKET_VNET_HDR: Final = 15
_SIOCGIFHWADDR: Final = 0x8927
_ARPHRD_ETHER: Final = 1
_ETH_HLEN: Final = 14
_ETH_TYPE_IP: Final = b"\x08\x00"
_VNET = struct.Struct("<BBHHHH")  # struct virtio_net_hdr, little-endian (see wire.vnet)
_SO_SNDBUFFORCE: Final = 32
_PACKET_HOST: Final = 0
_ETH_ALEN: Final = 6
#: Next hops remembered (one per peer address on this link); forgotten all at once beyond it.
_MAX_NEIGHBOURS: Final = 4096
#: The largest IPv4 datagram, and so the largest super-segment the kernel cuts for us.
GSO_MAX_SIZE: Final = 65535
_PROTO_TCP: Final = 6
_FIN: Final = 0x01
_PSH: Final = 0x08
_CWR: Final = 0x80
_PACKET_STATISTICS: Final = 6
# tpacket_auxdata.tp_status bits (<linux/if_packet.h>).
_TP_STATUS_CSUMNOTREADY: Final = 1 << 3
_TP_STATUS_CSUM_VALID: Final = 1 << 7
#: struct tpacket_auxdata: tp_status, tp_len, tp_snaplen, tp_mac, tp_net, tp_vlan_tci/tpid.
_AUXDATA_SIZE: Final = struct.calcsize("=IIIHHHH")
_STATUS = struct.Struct("=I")
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(_AUXDATA_SIZE)
_LINKTYPE_RAW: Final = 12
#: Largest datagram read: a GRO-coalesced segment from a kernel peer can be 64 KiB.
_RECEIVE_SIZE: Final = 65536


def attach_filter(sock: socket.socket, program: bytes) -> None:
    """Attach a classic BPF program (a ``sock_filter`` array) to ``sock``."""
    if not program or len(program) % 8:
        raise ValueError("a BPF program is a non-empty array of 8-byte instructions")
    insns = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; } (padded to 16 bytes).
    fprog = struct.pack("HxxxxxxQ", len(program) // 8, ctypes.addressof(insns))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


@attrs.define(slots=True)
class AfPacketTxStats:
    """How an :class:`AfPacketLink` sent what it sent."""

    #: Packets sent through the packet socket (checksum completed by the kernel or device).
    packet_socket: int = 0
    #: Of those, super-segments the kernel cut (GSO/TSO).
    gso_sent: int = 0
    #: Super-segments cut by the link because no next-hop address was known yet.
    software_segmented: int = 0


def _open_tx(name: str) -> tuple[socket.socket, bytes | None]:
    """A transmit-only packet socket (protocol 0: it receives nothing) with virtio-net headers,
    and the interface's own Ethernet address (None if it is not an Ethernet interface: then the
    socket stays unused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            answer = fcntl.ioctl(probe, _SIOCGIFHWADDR, struct.pack("16s16x", name.encode()))
        except OSError as exc:
            raise LinkSetupError(exc.errno or errno.EIO,
                                 f"link-layer address of {name}: {exc.strerror}") from exc
    hatype = struct.unpack_from("H", answer, 16)[0]
    own = answer[18:18 + _ETH_ALEN] if hatype == _ARPHRD_ETHER else None
    # SOCK_RAW: the kernel takes a virtio-net header only there, so the link writes the
    # Ethernet header itself.
    tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        tx.setsockopt(_SOL_PACKET, _PACKET_VNET_HDR, 1)
        try:
            tx.setsockopt(socket.SOL_SOCKET, _SO_SNDBUFFORCE, SEND_BUFFER)
        except OSError:
            tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        tx.setblocking(False)
    except OSError as exc:
        tx.close()
        raise LinkSetupError(exc.errno or errno.EIO,
                             f"AF_PACKET transmit socket on {name}: {exc.strerror}") from exc
    return tx, own


class AfPacketLink(PcapLink):
    """Raw IPv4 socket out, ``AF_PACKET`` + classic BPF in. Open with
    ``open_pcap_link(..., backend="afpacket")``."""

    def _open_rx(self, info: InterfaceInfo, address: str, ports: range) -> int:
        program = compile_bpf(filter_expression(address, ports), linktype=_LINKTYPE_RAW)
        # Protocol 0: nothing is delivered until bind() names one, after the filter is in place.
        rx = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, 0)
        try:
            attach_filter(rx, program)
            rx.setsockopt(_SOL_PACKET, _PACKET_AUXDATA, 1)
            try:
                rx.setsockopt(_SOL_PACKET, _PACKET_IGNORE_OUTGOING, 1)
            except OSError:
                pass  # before Linux 4.20; outgoing copies are still excluded by the filter
            try:
                rx.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, CAPTURE_BUFFER)
            except OSError:
                rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CAPTURE_BUFFER)
            rx.bind((info.name, _ETH_P_IP))
            rx.setblocking(False)
        except OSError as exc:
            rx.close()
            raise LinkSetupError(exc.errno or errno.EIO,
                                 f"AF_PACKET socket on {info.name}: {exc.strerror}") from exc
        try:
            ptx, own = _open_tx(info.name)
        except BaseException:
            rx.close()
            raise
        self._rx = rx
        self._ptx = ptx
        self._buffer = bytearray(_RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        self._truncated_reported = 0
        #: Next-hop link-layer address by IPv4 source, learned from what arrives.
        self._macs: dict[bytes, bytes] = {}
        #: Counters of the transmit paths.
        self.tx_stats = AfPacketTxStats()
        #: Transmit TCP through the packet socket with checksum and segmentation offload
        #: (Ethernet interfaces only).
        self._eth_tail = (own or b"") + _ETH_TYPE_IP
        self.gso = True
        return rx.fileno()

    def _drain(self, into: deque[bytes], max_packets: int) -> None:
        recvmsg_into = self._rx.recvmsg_into
        buffers = [self._view]
        view = self._view
        stats = self.stats
        rx_stats = self.rx_stats
        macs = self._macs
        offload = self.offload
        for _ in range(max_packets):
            try:
                n, ancillary, _, source = recvmsg_into(buffers, _ANCILLARY_SIZE, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            if n > _RECEIVE_SIZE:  # MSG_TRUNC returns the real length: never hand on a part
                rx_stats.truncated += 1
                stats.count_dropped(n)
                continue
            packet = bytes(view[:n])
            status = 0
            for level, kind, data in ancillary:
                if level == _SOL_PACKET and kind == _PACKET_AUXDATA and len(data) >= _STATUS.size:
                    status = _STATUS.unpack_from(data)[0]
            if status & (_TP_STATUS_CSUMNOTREADY | _TP_STATUS_CSUM_VALID):
                # The kernel's word covers the transport checksum only; the IPv4 header is
                # checked here, as ip_rcv would (the tap sees packets before it).
                if not ipv4_header_ok(packet):
                    rx_stats.checksum_dropped += 1
                    stats.count_dropped(n)
                    continue
                if status & _TP_STATUS_CSUMNOTREADY:
                    rx_stats.partial += 1
                    if not offload:
                        packet = complete_checksum(packet)
                else:
                    rx_stats.device_verified += 1
            elif checksums_ok(packet):
                rx_stats.software_verified += 1
            else:
                rx_stats.checksum_dropped += 1
                stats.count_dropped(n)
                continue
            if source[2] == _PACKET_HOST and len(source[4]) == _ETH_ALEN:
                if len(macs) >= _MAX_NEIGHBOURS and packet[12:16] not in macs:
                    macs.clear()
                macs[packet[12:16]] = source[4]
            into.append(packet)

    def capture_stats(self) -> tuple[int, int, int]:
        """(packets received, dropped for lack of buffer, truncated) since the last call.

        ``PACKET_STATISTICS`` resets the kernel's counters when read.
        """
        raw = self._rx.getsockopt(_SOL_PACKET, _PACKET_STATISTICS, 8)  # tp_packets, tp_drops
        packets, drops = struct.unpack("II", raw)
        truncated = self.rx_stats.truncated - self._truncated_reported
        self._truncated_reported = self.rx_stats.truncated
        return packets, drops, truncated

    def _close_rx(self) -> None:
        self._rx.close()
        self._ptx.close()

    # ---- transmit

    @property
    def gso(self) -> bool:
        """Whether TCP goes out through the packet socket with checksum and segmentation
        offload; settable (to compare), but never on for an interface that is not Ethernet."""
        return self._gso

    @gso.setter
    def gso(self, on: bool) -> None:
        # A packet socket reads the virtio-net header in host order (legacy virtio); the codec
        # writes little-endian, so big-endian hosts keep to the raw IPv4 socket.
        self._gso = bool(on) and bool(self._eth_tail[:-2]) and sys.byteorder == "little"

    @property
    def gso_max_size(self) -> int:
        # Through the packet socket the kernel cuts a TCP super-segment (in the device if it
        # has TSO, by its software GSO otherwise); pieces fit the MTU (see tcp_offload_head).
        return GSO_MAX_SIZE if self._gso else 0

    def send_batch(self, packets: Iterable[bytes]) -> None:
        if self.closed:
            raise trio.ClosedResourceError("the link is closed")
        if not self.gso:
            super().send_batch(packets)
            return
        sendmsg = self._ptx.sendmsg
        macs = self._macs
        mtu = self.mtu
        stats = self.stats
        tx_stats = self.tx_stats
        eth_tail = self._eth_tail
        address = (self.interface, _ETH_P_IP)
        raw: list[bytes] = []  # packets for the raw IPv4 socket, sent in order before the next
        for packet in packets:
            size = len(packet)
            mac = macs.get(packet[16:20]) if size >= 40 and packet[9] == _PROTO_TCP else None
            if mac is None:
                if size > mtu:
                    # A super-segment to a next hop we never heard from (rare: the peer's SYN
                    # or SYN-ACK teaches it): cut here, as software GSO would.
                    pieces = segment_tcp(packet, mtu)
                    if pieces:
                        tx_stats.software_segmented += 1
                        raw += pieces
                    else:
                        stats.count_dropped(size)
                else:
                    raw.append(packet)
                continue
            if raw:
                super().send_batch(raw)
                raw = []
            try:
                head, rest, gso = tcp_offload_head(packet, mtu)
            except ValueError:
                stats.count_dropped(size)
                continue
            # The virtio-net header's offsets count from the frame: the Ethernet header goes
            # between it and the IPv4 packet.
            flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(head)
            vnet = _VNET.pack(flags, gso_type, hdr_len + _ETH_HLEN, gso_size,
                              csum_start + _ETH_HLEN, csum_offset)
            try:
                # Gathered by the kernel: the payload is not copied here.
                sendmsg((vnet, mac, eth_tail, memoryview(head)[_VNET.size:],
                         memoryview(packet)[rest:]), (), 0, address)
            except OSError as exc:
                stats.count_dropped(size)
                self.send_errors[exc.errno or 0] += 1
                continue
            stats.packets_sent += 1
            stats.bytes_sent += size
            tx_stats.packet_socket += 1
            if gso:
                tx_stats.gso_sent += 1
        if raw:
            super().send_batch(raw)
