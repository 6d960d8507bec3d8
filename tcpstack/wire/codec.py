"""Packet codec: IPv4 datagrams carrying TCP or ICMP, to and from the value types.

``parse_packet`` and ``build_packet`` are the per-packet hot path of the stack, so they are
written for CPython's costs: one precompiled ``struct`` call for the 40 octets of IPv4 + TCP
header, cached address and flag objects, checksums as big-integer arithmetic (see
:mod:`.checksum`), and value types created without their attrs ``__init__`` (see :mod:`._fast`).
The common packet (IHL 5, TCP, not a fragment, sane lengths) takes the straight path; anything
else, including every malformed packet, goes through the general path, which names the field at
fault in a :class:`MalformedPacket`.

Where the time of parsing a 1460-octet segment goes (``python bench/wire.py --breakdown``;
CPython 3.11, 2.5 GHz Xeon VM, 2026-11-26): the call ~0.06 us, the struct call ~0.24, the
payload copy ~0.16, allocating the segment and storing its 15 slots ~0.30; a parser doing only
those, with no check at all, takes ~0.96 us. Validation, the address/port lookup and the flag
object add ~0.18 us on top. The allocations are the cost: every int above 256 that ``struct``
returns is a new object, which is why the parse struct below is shaped to return as few as it
can, and the payload of a full-sized segment is a fresh ``bytes`` object from the C allocator.
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
    _int_of,  # the address cache, read inline on the build path: a lookup instead of a call
    address_int,
    address_str,
    parse_ipv4_header,
)
from .options import decode_options, encode_options
from .segment import NO_OPTIONS, IcmpMessage, TcpFlags, TcpOptions, TcpSegment, Timestamps

__all__ = ["parse_packet", "build_packet", "TCP_HEADER_LEN"]

TCP_HEADER_LEN = 20

# Building uses one struct for the whole 40-octet IPv4 + TCP header.
_IP_TCP = struct.Struct("!BBHHHBBHIIHHIIBBHHH")
_TCP = struct.Struct("!HHIIBBHHH")

# Parsing reads fewer, cheaper fields: struct's cost is mostly one int object per field whose
# value is above 256 (small ints are shared), so the fragment word is read as two bytes, the
# checksums and the data offset octet (already read to choose the struct) are skipped, and
# addresses and ports come out as one 12-octet key into _flow_of. Fields: vihl, tos, total_len,
# ip_id, frag_hi, frag_lo, ttl, protocol, flow key, seq, ack, flags, window, urgent.
_PARSE = struct.Struct("!BBHHBBBB2x12sIIxBH2xH")
# The same and, for data offset 8, what nearly always follows in an established connection:
# NOP, NOP, timestamps (RFC 7323 appendix A layout), as prefix word, TSval, TSecr.
_PARSE_TS = struct.Struct("!BBHHBBBB2x12sIIxBH2xHIII")
_FAST_LEN = IPV4_HEADER_LEN + TCP_HEADER_LEN
_FAST_TS_LEN = _PARSE_TS.size
# Bound once: a call through a global is cheaper than a method lookup on every packet.
_unpack = _PARSE.unpack_from
_unpack_ts = _PARSE_TS.unpack_from
_OFFSET_5 = 5 << 4  # data offset byte of a header without options, reserved bits clear
_OFFSET_8 = 8 << 4
_NOP_NOP_TS_PREFIX = 0x0101080A
_LAYOUT_NOP_NOP_TS = (1, 1, 8)
_new_tuple = tuple.__new__
_FLAGS = tuple(TcpFlags(value) for value in range(256))
# By the high octet of the IPv4 flags/fragment-offset word: MF or offset bits mean a fragment;
# the reserved bit (0x80) is ignored, as in the general path.
_FRAGMENT_HI = (FLAG_MF | OFFSET_MASK) >> 8
_DF_OF = tuple(bool(value & (FLAG_DF >> 8)) for value in range(256))

# Source and destination address and ports, as the 12 octets at offset 12 of an IHL-5 packet,
# to (src, dst, sport, dport). One dict lookup replaces two address lookups and two int
# allocations. Bounded like the address caches: emptied when full.
_FLOW_CACHE_LIMIT = 4096
_flow_of: dict[bytes, tuple[str, str, int, int]] = {}


def _flow(key: bytes) -> tuple[str, str, int, int]:
    flow = (
        address_str(int.from_bytes(key[0:4], "big")),
        address_str(int.from_bytes(key[4:8], "big")),
        int.from_bytes(key[8:10], "big"),
        int.from_bytes(key[10:12], "big"),
    )
    if len(_flow_of) >= _FLOW_CACHE_LIMIT:
        _flow_of.clear()
    _flow_of[key] = flow
    return flow


def _as_bytes(buf: object) -> bytes:
    # A copy: the payload is copied out anyway, and the straight path then slices bytes only.
    if isinstance(buf, bytes | bytearray | memoryview):
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
    # Every line here is on the per-packet path; see bench/wire.py and the module docstring for
    # what each costs. The straight paths take IHL 5, TCP, unfragmented, with sane lengths, one
    # per common header shape (no options; NOP NOP TS; anything else, options decoded in
    # general), each with its own copy of the checks so that no branch tests what another
    # already knows. Fields the checks do not need are unpacked straight into the new segment's
    # slots (no local variable in between); a packet that fails a check is handed whole to
    # _parse_general, which names the fault, and the half-filled object is dropped unseen.
    # A buffer too short for the straight path's struct raises IndexError or struct.error
    # (caught below, free in CPython 3.11 when nothing is raised) instead of paying for an
    # explicit length test on every packet.
    if type(buf) is not bytes:
        buf = _as_bytes(buf)
    self: Any  # a _MutableSegment until its class is switched to TcpSegment at the end
    try:
        offset = buf[32]  # TCP data offset octet if IHL is 5 (checked below)
        if offset == _OFFSET_5:
            self = _MutableSegment()
            (vihl, self.tos, total_len, self.ip_id, frag_hi, frag_lo, self.ttl, protocol,
             flow_key, self.seq, self.ack, flags, self.window, self.urgent) = _unpack(buf)
            if (
                vihl != 0x45
                or protocol != PROTO_TCP
                or frag_lo
                or frag_hi & _FRAGMENT_HI
                or total_len > len(buf)
                or total_len < _FAST_LEN
            ):
                return _parse_general(buf, verify_checksum)
            if verify_checksum:
                _verify_tcp(buf, IPV4_HEADER_LEN, total_len, int.from_bytes(flow_key[0:4], "big"),
                            int.from_bytes(flow_key[4:8], "big"))
            self.options = NO_OPTIONS
            self.payload = buf[_FAST_LEN:total_len]
        elif offset == _OFFSET_8:
            self = _MutableSegment()
            (vihl, self.tos, total_len, self.ip_id, frag_hi, frag_lo, self.ttl, protocol,
             flow_key, self.seq, self.ack, flags, self.window, self.urgent, option_prefix, tsval,
             tsecr) = _unpack_ts(buf)
            if (
                vihl != 0x45
                or protocol != PROTO_TCP
                or frag_lo
                or frag_hi & _FRAGMENT_HI
                or total_len > len(buf)
                or total_len < _FAST_TS_LEN
            ):
                return _parse_general(buf, verify_checksum)
            if verify_checksum:  # before the options: a corrupt packet is a ChecksumError
                _verify_tcp(buf, IPV4_HEADER_LEN, total_len, int.from_bytes(flow_key[0:4], "big"),
                            int.from_bytes(flow_key[4:8], "big"))
            if option_prefix == _NOP_NOP_TS_PREFIX:
                # new_options() inlined.
                options: Any = _MutableOptions()
                options.mss = None
                options.wscale = None
                options.sack_permitted = False
                options.sack_blocks = ()
                options.timestamps = _new_tuple(Timestamps, (tsval, tsecr))
                options.unknown = ()
                options.layout = _LAYOUT_NOP_NOP_TS
                options.__class__ = TcpOptions
                self.options = options
            else:
                self.options = decode_options(buf[_FAST_LEN:_FAST_TS_LEN])
            self.payload = buf[_FAST_TS_LEN:total_len]
        else:
            self = _MutableSegment()
            (vihl, self.tos, total_len, self.ip_id, frag_hi, frag_lo, self.ttl, protocol,
             flow_key, self.seq, self.ack, flags, self.window, self.urgent) = _unpack(buf)
            header_len = (offset >> 2) & 0x3C  # reserved bits of the octet ignored
            if (
                vihl != 0x45
                or protocol != PROTO_TCP
                or frag_lo
                or frag_hi & _FRAGMENT_HI
                or total_len > len(buf)
                or header_len < TCP_HEADER_LEN
                or header_len > total_len - IPV4_HEADER_LEN
            ):
                return _parse_general(buf, verify_checksum)
            data_at = IPV4_HEADER_LEN + header_len
            if verify_checksum:
                _verify_tcp(buf, IPV4_HEADER_LEN, total_len, int.from_bytes(flow_key[0:4], "big"),
                            int.from_bytes(flow_key[4:8], "big"))
            self.options = decode_options(buf[_FAST_LEN:data_at])
            self.payload = buf[data_at:total_len]
    except (IndexError, struct.error):
        return _parse_general(buf, verify_checksum)
    try:
        self.src, self.dst, self.sport, self.dport = _flow_of[flow_key]
    except KeyError:
        self.src, self.dst, self.sport, self.dport = _flow(flow_key)
    self.flags = _FLAGS[flags]
    self.df = _DF_OF[frag_hi]
    self.__class__ = TcpSegment
    return self


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


_last_encoded: tuple[TcpOptions, bytes] = (NO_OPTIONS, b"")


def build_packet(segment: TcpSegment, *, checksum: bool = True) -> bytes:
    """Encode ``segment`` as an IPv4 datagram (IHL 5, no IP options).

    The IPv4 header checksum is always computed; the TCP checksum only when ``checksum`` is true
    (leave it zero for links that compute it, such as TUN with checksum offload). Raises
    ``ValueError`` naming the field for values that do not fit, options beyond 40 octets, or a
    datagram beyond 65535 octets.
    """
    global _last_encoded
    options = segment.options
    last = _last_encoded
    if options is NO_OPTIONS:
        option_bytes = b""
    elif options is last[0]:
        # A sender's burst shares one options object (same timestamps): encode it once. The
        # cache holds the object, so no other object can take its identity while cached; one
        # tuple, so a thread never sees an object with another's encoding.
        option_bytes = last[1]
    else:
        option_bytes = encode_options(options)
        _last_encoded = (options, option_bytes)
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
