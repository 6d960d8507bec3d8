"""Packet codec: IPv4 datagrams carrying TCP or ICMP, to and from the value types.

``parse_packet`` and ``build_packet`` are the per-packet hot path of the stack, so they are
written for CPython's costs: one precompiled ``struct`` call for the 40 octets of IPv4 + TCP
header, cached address and flag objects, checksums as big-integer arithmetic (see
:mod:`.checksum`), and value types created without their attrs ``__init__`` (see :mod:`._fast`).
The common packet (IHL 5, TCP, not a fragment, sane lengths) takes the straight path; anything
else, including every malformed packet, goes through the general path, which names the field at
fault in a :class:`MalformedPacket`.
"""

from __future__ import annotations

import struct
from typing import Any

from ._fast import _MutableOptions, _MutableSegment, new_segment
from .checksum import sum_congruent
from .errors import ChecksumError, MalformedPacket
from .icmp import parse_icmp
from .ipv4 import (
    FLAG_DF,
    FLAG_MF,
    IPV4_HEADER_LEN,
    MAX_TOTAL_LEN,
    OFFSET_MASK,
    PROTO_ICMP,
    PROTO_TCP,
    _int_of,  # the address caches, read inline on the hot path: a lookup instead of a call
    _str_of,
    address_int,
    address_str,
    parse_ipv4_header,
)
from .options import decode_options, encode_options
from .segment import NO_OPTIONS, IcmpMessage, TcpFlags, TcpOptions, TcpSegment, Timestamps

__all__ = ["parse_packet", "build_packet", "TCP_HEADER_LEN"]

TCP_HEADER_LEN = 20
_FAST_LEN = IPV4_HEADER_LEN + TCP_HEADER_LEN
_NOT_FIRST_FRAGMENT = FLAG_MF | OFFSET_MASK

_IP_TCP = struct.Struct("!BBHHHBBHIIHHIIBBHHH")
_IP_TCP_TS = struct.Struct("!BBHHHBBHIIHHIIBBHHHIII")
_FAST_TS_LEN = _IP_TCP_TS.size
_NOP_NOP_TS_PREFIX = 0x0101080A
_LAYOUT_NOP_NOP_TS = (1, 1, 8)
_new_tuple = tuple.__new__
_TCP = struct.Struct("!HHIIBBHHH")
_FLAGS = tuple(TcpFlags(value) for value in range(256))


def _byte_view(buf: object) -> bytes | memoryview:
    if isinstance(buf, memoryview):
        if buf.format == "B" and buf.ndim == 1 and buf.c_contiguous:
            return buf
        if buf.c_contiguous:
            return buf.cast("B")
        return buf.tobytes()
    if isinstance(buf, bytearray):
        return memoryview(buf)
    if isinstance(buf, bytes):
        return bytes(buf)
    raise TypeError(f"a packet is bytes, bytearray or memoryview, not {type(buf).__name__}")


def parse_packet(
    buf: bytes | bytearray | memoryview, *, verify_checksum: bool = True
) -> TcpSegment | IcmpMessage:
    """Decode one IPv4 datagram holding a TCP segment or an ICMP message.

    Octets after the IPv4 total length (Ethernet padding) are ignored. The payload is copied out,
    so ``buf`` may be a reused receive buffer. Skip checksum verification only where the link
    guarantees integrity. Raises :class:`MalformedPacket` (:class:`ChecksumError` for a bad
    checksum) and nothing else for any content of ``buf``.
    """
    if type(buf) is not bytes:
        buf = _byte_view(buf)
    n = len(buf)
    if n >= _FAST_TS_LEN and buf[32] == 0x80:
        # Data offset 8 is, in an established connection, nop,nop,TS nearly always: read the
        # option along with the headers in the same struct call.
        (vihl, tos, total_len, ip_id, frag, ttl, protocol, _, src, dst, sport, dport, seq, ack,
         offset, flags, window, _, urgent, option_prefix, tsval, tsecr) = _IP_TCP_TS.unpack_from(buf)
    elif n >= _FAST_LEN:
        (vihl, tos, total_len, ip_id, frag, ttl, protocol, _, src, dst, sport, dport, seq, ack,
         offset, flags, window, _, urgent) = _IP_TCP.unpack_from(buf)
        option_prefix = tsval = tsecr = 0
    else:
        return _parse_general(buf, verify_checksum)
    header_len = (offset >> 2) & 0x3C
    if (
        vihl != 0x45
        or protocol != PROTO_TCP
        or frag & _NOT_FIRST_FRAGMENT
        or header_len < TCP_HEADER_LEN
        or header_len > total_len - IPV4_HEADER_LEN
        or total_len > n
    ):
        return _parse_general(buf, verify_checksum)
    if verify_checksum:
        _verify_tcp(buf, IPV4_HEADER_LEN, total_len, src, dst)
    data_at = IPV4_HEADER_LEN + header_len
    if header_len == TCP_HEADER_LEN:
        options = NO_OPTIONS
    elif option_prefix == _NOP_NOP_TS_PREFIX:
        # new_options() inlined.
        fast_options: Any = object.__new__(_MutableOptions)
        fast_options.mss = None
        fast_options.wscale = None
        fast_options.sack_permitted = False
        fast_options.sack_blocks = ()
        fast_options.timestamps = _new_tuple(Timestamps, (tsval, tsecr))
        fast_options.unknown = ()
        fast_options.layout = _LAYOUT_NOP_NOP_TS
        fast_options.__class__ = TcpOptions
        options = fast_options
    else:
        options = decode_options(bytes(buf[_FAST_LEN:data_at]))
    payload = buf[data_at:total_len]
    if type(payload) is not bytes:
        payload = bytes(payload)
    # new_segment() inlined: the call alone costs ~0.1 us with 15 arguments.
    self: Any = object.__new__(_MutableSegment)
    try:
        self.src = _str_of[src]
    except KeyError:
        self.src = address_str(src)
    try:
        self.dst = _str_of[dst]
    except KeyError:
        self.dst = address_str(dst)
    self.sport = sport
    self.dport = dport
    self.seq = seq
    self.ack = ack
    self.flags = _FLAGS[flags]
    self.window = window
    self.urgent = urgent
    self.options = options
    self.payload = payload
    self.ttl = ttl
    self.tos = tos
    self.ip_id = ip_id
    self.df = (frag & FLAG_DF) != 0  # the reserved bit may be set too
    self.__class__ = TcpSegment
    segment: TcpSegment = self
    return segment


def _verify_tcp(buf: bytes | memoryview, at: int, end: int, src: int, dst: int) -> None:
    if int.from_bytes(buf[:at], "big") % 0xFFFF:
        raise ChecksumError("IPv4 header checksum does not verify")
    # The pseudo-header (RFC 9293 section 3.1) always adds protocol 6, so the sum is never
    # zero and a valid segment sums to a multiple of 65535.
    tcp_len = end - at
    if (sum_congruent(buf[at:end]) + src + dst + PROTO_TCP + tcp_len) % 0xFFFF:
        checksum = _TCP.unpack_from(buf, at)[7]
        raise ChecksumError(f"TCP checksum 0x{checksum:04x} does not verify")


def _parse_general(buf: bytes | memoryview, verify_checksum: bool) -> TcpSegment | IcmpMessage:
    ip = parse_ipv4_header(buf, verify_checksum)
    if ip.protocol == PROTO_ICMP:
        return parse_icmp(
            bytes(buf[ip.header_len : ip.total_len]), ip.src, ip.dst, ip.ttl, ip.tos, ip.ip_id,
            verify_checksum,
        )
    if ip.protocol != PROTO_TCP:
        raise MalformedPacket(f"unsupported IP protocol {ip.protocol}")
    at = ip.header_len
    tcp_len = ip.total_len - at
    if tcp_len < TCP_HEADER_LEN:
        raise MalformedPacket(f"TCP header truncated: {tcp_len} octets, need {TCP_HEADER_LEN}")
    sport, dport, seq, ack, offset, flags, window, _, urgent = _TCP.unpack_from(buf, at)
    data_offset = offset >> 4
    header_len = data_offset * 4
    if header_len < TCP_HEADER_LEN:
        raise MalformedPacket(f"TCP data offset {data_offset} is below 5")
    if header_len > tcp_len:
        raise MalformedPacket(
            f"TCP data offset {data_offset} ({header_len} octets) is beyond the "
            f"{tcp_len}-octet segment"
        )
    if verify_checksum:
        # parse_ipv4_header verified the IP header already; this re-check is cheap.
        _verify_tcp(buf, at, ip.total_len, ip.src, ip.dst)
    data_at = at + header_len
    return new_segment(
        address_str(ip.src), address_str(ip.dst), sport, dport, seq, ack, _FLAGS[flags], window,
        urgent, decode_options(bytes(buf[at + TCP_HEADER_LEN : data_at])),
        bytes(buf[data_at : ip.total_len]), ip.ttl, ip.tos, ip.ip_id, ip.df,
    )


def build_packet(segment: TcpSegment, *, checksum: bool = True) -> bytes:
    """Encode ``segment`` as an IPv4 datagram (IHL 5, no IP options).

    The IPv4 header checksum is always computed; the TCP checksum only when ``checksum`` is true
    (leave it zero for links that compute it, such as TUN with checksum offload). Raises
    ``ValueError`` naming the field for values that do not fit, options beyond 40 octets, or a
    datagram beyond 65535 octets.
    """
    options = segment.options
    option_bytes = b"" if options is NO_OPTIONS else encode_options(options)
    payload = segment.payload
    header_len = TCP_HEADER_LEN + len(option_bytes)
    tcp_len = header_len + len(payload)
    total_len = IPV4_HEADER_LEN + tcp_len
    if total_len > MAX_TOTAL_LEN:
        raise ValueError(
            f"datagram of {total_len} octets (payload {len(payload)}) exceeds the IPv4 maximum "
            f"{MAX_TOTAL_LEN}"
        )
    try:
        src = _int_of[segment.src]
    except KeyError:
        src = address_int(segment.src)
    try:
        dst = _int_of[segment.dst]
    except KeyError:
        dst = address_int(segment.dst)
    sport = segment.sport
    dport = segment.dport
    seq = segment.seq
    ack = segment.ack
    flags = segment.flags
    window = segment.window
    urgent = segment.urgent
    ttl = segment.ttl
    tos = segment.tos
    ip_id = segment.ip_id
    frag = FLAG_DF if segment.df else 0
    offset = header_len << 2  # data offset in words, in the high nibble
    # Sums modulo 65535 of the header words (see .checksum); a 32-bit field adds as its two
    # halves do, because 2**16 == 1 (mod 65535). Neither sum can be zero, so -s is the field.
    ip_checksum = -(0x4500 + tos + total_len + ip_id + frag + (ttl << 8) + PROTO_TCP + src + dst) % 0xFFFF
    if checksum:
        s = (src + dst + PROTO_TCP + tcp_len + sport + dport + seq + ack + (offset << 8) + flags
             + window + urgent)
        if option_bytes:
            s += int.from_bytes(option_bytes, "big")
        if payload:
            s += sum_congruent(payload)
        tcp_checksum = -s % 0xFFFF
    else:
        tcp_checksum = 0
    try:
        header = _IP_TCP.pack(
            0x45, tos, total_len, ip_id, frag, ttl, PROTO_TCP, ip_checksum, src, dst,
            sport, dport, seq, ack, offset, flags, window, tcp_checksum, urgent,
        )
    except struct.error as exc:
        _check_segment_ranges(segment)
        raise ValueError(f"TCP/IP header field out of range: {exc}") from exc
    if option_bytes:
        return b"".join((header, option_bytes, payload))
    return header + payload


_RANGES = (
    ("sport", 0xFFFF), ("dport", 0xFFFF), ("seq", 0xFFFFFFFF), ("ack", 0xFFFFFFFF),
    ("flags", 0xFF), ("window", 0xFFFF), ("urgent", 0xFFFF), ("ttl", 0xFF), ("tos", 0xFF),
    ("ip_id", 0xFFFF),
)


def _check_segment_ranges(segment: TcpSegment) -> None:
    for name, limit in _RANGES:
        value = getattr(segment, name)
        if not isinstance(value, int) or not 0 <= value <= limit:
            raise ValueError(f"TcpSegment.{name}={value!r} is out of range 0..{limit}")
