"""The virtio-net header (``struct virtio_net_hdr``) a TUN device with ``IFF_VNET_HDR`` prefixes.

Linux's ``include/uapi/linux/virtio_net.h`` defines the 10-octet header (``num_buffers`` of the
12-octet variant is for mergeable receive buffers, which TUN does not use)::

    u8  flags        NEEDS_CSUM (1): the checksum is partial, complete it from csum_start;
                     DATA_VALID (2): the checksum was verified (receive only)
    u8  gso_type     NONE (0), TCPV4 (1), UDP (3), TCPV6 (4), UDP_L4 (5); | ECN (0x80)
    u16 hdr_len      length of the headers that are copied into every GSO segment
    u16 gso_size     payload octets per segment (the MSS) when gso_type is not NONE
    u16 csum_start   where the checksummed region starts (the transport header)
    u16 csum_offset  offset of the checksum field from csum_start (16 for TCP)

The 16-bit fields are in the device's byte order; the link sets it to little-endian with
``TUNSETVNETLE`` so this codec does not depend on the host.

With NEEDS_CSUM the checksum field holds the folded, *not* complemented, one's complement sum of
the pseudo-header (RFC 9293 section 3.1, with the TCP length of the whole, unsegmented packet):
the device adds the sum of the region from ``csum_start`` to the end and stores the complement.
That is the contract of Linux's ``CHECKSUM_PARTIAL`` (``__tcp_v4_send_check``), and
``tcp_gso_segment`` adjusts the same field per segment when it cuts a GSO packet.

Everything here is pure: the TUN link (:mod:`tcpstack.links.tun`) calls these per packet.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import attrs

from .checksum import sum_congruent, sum_verifies
from .errors import MalformedPacket

__all__ = [
    "VNET_HDR_LEN",
    "GSO_ECN",
    "TCP_CSUM_OFFSET",
    "GsoType",
    "VnetFlags",
    "VirtioNetHdr",
    "parse_vnet_hdr",
    "encode_vnet_hdr",
    "tcp_offload_head",
    "plain_head",
    "checksums_ok",
]

VNET_HDR_LEN: Final = 10
#: gso_type bit: the packet's TCP header has CWR set; segmentation keeps it on the first segment
#: only (Linux SKB_GSO_TCP_ECN).
GSO_ECN: Final = 0x80
#: Offset of the TCP checksum field within the TCP header.
TCP_CSUM_OFFSET: Final = 16
#: Offset of the UDP checksum field within the UDP header.
UDP_CSUM_OFFSET: Final = 6

_HDR = struct.Struct("<BBHHHH")
# vihl, total length, flags + fragment offset, protocol, source and destination as one integer.
_IP_FIELDS = struct.Struct("!BxH2xHxB2xQ")
# The head of an IHL-5 packet: virtio-net header, the 36 octets before the TCP checksum, and the
# checksum field, big-endian on the wire: packed "<H" from the byte-swapped value.
_HEAD_IHL5 = struct.Struct("<BBHHHH36sH")
_CSUM_AT_IHL5: Final = 20 + 16
_FRAGMENT: Final = 0x3FFF  # MF and the fragment offset
_NEEDS_CSUM: Final = 1
_GSO_TCPV4: Final = 1
_GSO_TCPV4_ECN: Final = 1 | 0x80
_PROTO_ICMP: Final = 1
_PROTO_TCP: Final = 6
_PROTO_UDP: Final = 17
_TCP_CWR: Final = 0x80
_IPV4_MIN: Final = 20
_TCP_MIN: Final = 20


class VnetFlags(enum.IntFlag):
    NONE = 0
    NEEDS_CSUM = 1
    DATA_VALID = 2
    RSC_INFO = 4


class GsoType(enum.IntEnum):
    """``gso_type`` without the ECN bit."""

    NONE = 0
    TCPV4 = 1
    UDP = 3
    TCPV6 = 4
    UDP_L4 = 5


@attrs.frozen(slots=True)
class VirtioNetHdr:
    """One virtio-net header. ``ecn`` is the GSO_ECN bit of ``gso_type``, split out."""

    flags: VnetFlags = VnetFlags.NONE
    gso_type: GsoType = GsoType.NONE
    ecn: bool = False
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0

    def __attrs_post_init__(self) -> None:
        for name in ("hdr_len", "gso_size", "csum_start", "csum_offset"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
                raise ValueError(f"VirtioNetHdr.{name}={value!r} is out of range 0..65535")


def parse_vnet_hdr(buf: bytes | bytearray | memoryview) -> VirtioNetHdr:
    """Decode the first 10 octets of ``buf``; :class:`MalformedPacket` if short or unknown."""
    if len(buf) < VNET_HDR_LEN:
        raise MalformedPacket(f"virtio-net header truncated: {len(buf)} octets, need {VNET_HDR_LEN}")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _HDR.unpack_from(buf)
    if flags & ~int(VnetFlags.NEEDS_CSUM | VnetFlags.DATA_VALID | VnetFlags.RSC_INFO):
        raise MalformedPacket(f"virtio-net header flags 0x{flags:02x} has unknown bits")
    try:
        kind = GsoType(gso_type & ~GSO_ECN)
    except ValueError:
        raise MalformedPacket(f"virtio-net gso_type 0x{gso_type:02x} is unknown") from None
    return VirtioNetHdr(
        VnetFlags(flags), kind, bool(gso_type & GSO_ECN), hdr_len, gso_size, csum_start,
        csum_offset,
    )


def encode_vnet_hdr(hdr: VirtioNetHdr) -> bytes:
    return _HDR.pack(
        int(hdr.flags), int(hdr.gso_type) | (GSO_ECN if hdr.ecn else 0), hdr.hdr_len,
        hdr.gso_size, hdr.csum_start, hdr.csum_offset,
    )


_PLAIN_HEAD: Final = _HDR.pack(0, 0, 0, 0, 0, 0)


def plain_head() -> bytes:
    """The header of a packet whose checksums are complete and that is not to be segmented."""
    return _PLAIN_HEAD


def tcp_offload_head(packet: bytes | bytearray | memoryview, mtu: int) -> tuple[bytes, int, bool]:
    """What to write before ``packet[rest:]`` to hand an IPv4/TCP packet to the device.

    Returns ``(head, rest, gso)``: ``head`` is the virtio-net header followed by ``packet`` up to
    its TCP checksum field and that field set to the pseudo-header sum, so the write is
    ``head + packet[rest:]`` and the caller never copies the payload. The TCP checksum field of
    ``packet`` is ignored (the stack leaves it zero on offload links). A packet whose payload is
    larger than one ``mtu``-sized segment gets ``gso_type`` TCPV4 and ``gso_size`` = ``mtu`` minus
    its IP and TCP headers (options included): the segments the device cuts then fit ``mtu``.
    The ECN bit is set when CWR is, as Linux does, so CWR stays on the first segment only
    (RFC 3168 section 6.1.2).

    Raises ``ValueError`` if ``packet`` is not an unfragmented IPv4/TCP packet whose headers fit.
    """
    # Per-packet path of the TUN link (a 64 KiB super-segment or, without TSO, every MSS-sized
    # segment): one struct call reads what the common IHL-5 packet needs, and one builds the
    # head; enum objects are kept out of it (each IntFlag operation costs a Python call).
    n = len(packet)
    if n >= _IPV4_MIN + _TCP_MIN:
        vihl, total_len, frag, proto, addresses = _IP_FIELDS.unpack_from(packet)
        if vihl == 0x45 and proto == _PROTO_TCP and not frag & _FRAGMENT and total_len == n:
            headers = _IPV4_MIN + ((packet[32] >> 4) << 2)
            if _IPV4_MIN + _TCP_MIN <= headers <= n:
                # The 8 octets of source and destination are congruent (mod 65535) to the sum of
                # their four 16-bit words, since 2**16 == 1 (see .checksum).
                pseudo = (addresses + _PROTO_TCP + n - _IPV4_MIN) % 0xFFFF or 0xFFFF
                gso_size = mtu - headers
                if n <= mtu:
                    gso_type = gso_size = 0
                    gso = False
                elif gso_size > 0:
                    gso_type = _GSO_TCPV4_ECN if packet[33] & _TCP_CWR else _GSO_TCPV4
                    gso = True
                else:
                    return _tcp_offload_head_general(packet, mtu)  # raises, naming the fault
                head = _HEAD_IHL5.pack(
                    _NEEDS_CSUM, gso_type, headers, gso_size, _IPV4_MIN, TCP_CSUM_OFFSET,
                    packet[:_CSUM_AT_IHL5], ((pseudo & 0xFF) << 8) | (pseudo >> 8),
                )
                return head, _CSUM_AT_IHL5 + 2, gso
    return _tcp_offload_head_general(packet, mtu)


def _tcp_offload_head_general(
    packet: bytes | bytearray | memoryview, mtu: int
) -> tuple[bytes, int, bool]:
    """:func:`tcp_offload_head` for IP options, and every error with its reason."""
    n = len(packet)
    if n < _IPV4_MIN + _TCP_MIN or packet[0] >> 4 != 4:
        raise ValueError(f"not an IPv4/TCP packet ({n} octets)")
    ihl = (packet[0] & 0x0F) << 2
    if ihl < _IPV4_MIN or packet[9] != _PROTO_TCP:
        raise ValueError(f"not an IPv4/TCP packet (IHL {ihl}, protocol {packet[9]})")
    if packet[6] & 0x3F or packet[7]:
        raise ValueError("an IPv4 fragment cannot be checksum-offloaded")
    if int.from_bytes(packet[2:4], "big") != n:
        raise ValueError(f"IPv4 total length {int.from_bytes(packet[2:4], 'big')} != {n} octets")
    if n < ihl + _TCP_MIN:
        raise ValueError(f"TCP header truncated: {n - ihl} octets")
    headers = ihl + ((packet[ihl + 12] >> 4) << 2)
    if headers < ihl + _TCP_MIN or headers > n:
        raise ValueError(f"TCP data offset {packet[ihl + 12] >> 4} does not fit the packet")
    pseudo = (int.from_bytes(packet[12:20], "big") + _PROTO_TCP + n - ihl) % 0xFFFF or 0xFFFF
    gso_size = mtu - headers
    if n - headers > gso_size:
        if gso_size < 1:
            raise ValueError(f"headers of {headers} octets leave no payload within MTU {mtu}")
        gso_type = _GSO_TCPV4_ECN if packet[ihl + 13] & _TCP_CWR else _GSO_TCPV4
        gso = True
    else:
        gso_type = gso_size = 0
        gso = False
    csum_at = ihl + TCP_CSUM_OFFSET
    head = b"".join((
        _HDR.pack(_NEEDS_CSUM, gso_type, headers, gso_size, ihl, TCP_CSUM_OFFSET),
        packet[:csum_at],
        pseudo.to_bytes(2, "big"),
    ))
    return head, csum_at + 2, gso


def checksums_ok(packet: bytes | bytearray | memoryview) -> bool:
    """Whether an IPv4 packet's header checksum and its TCP, UDP or ICMP checksum verify.

    For packets a device hands over without NEEDS_CSUM or DATA_VALID: their checksums are
    complete but nobody has checked them. Other protocols are judged by the IP header alone. A
    packet too short for what it claims is not OK.
    """
    n = len(packet)
    if n < _IPV4_MIN or packet[0] >> 4 != 4:
        return False
    ihl = (packet[0] & 0x0F) << 2
    total = int.from_bytes(packet[2:4], "big")
    if ihl < _IPV4_MIN or total < ihl or total > n:
        return False
    if int.from_bytes(packet[:ihl], "big") % 0xFFFF:
        return False
    if packet[6] & 0x3F or packet[7]:
        return True  # a fragment's transport checksum covers the reassembled datagram
    proto = packet[9]
    body = packet[ihl:total]
    if proto == _PROTO_ICMP:
        return len(body) >= 4 and sum_verifies(sum_congruent(body))
    if proto == _PROTO_TCP or proto == _PROTO_UDP:
        minimum = _TCP_MIN if proto == _PROTO_TCP else 8
        if len(body) < minimum:
            return False
        if proto == _PROTO_UDP and body[6:8] == b"\x00\x00":
            return True  # RFC 768: no checksum was computed
        s = sum_congruent(body) + int.from_bytes(packet[12:20], "big") + proto + len(body)
        return s % 0xFFFF == 0
    return True
