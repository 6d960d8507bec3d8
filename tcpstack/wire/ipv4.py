"""IPv4 header (RFC 791): decoding of the general case, encoding, and address conversion.

The codec keeps addresses as dotted-quad ``str`` in the value types and as 32-bit ``int`` on the
wire side. Converting costs ~0.2 us each way through ``socket``, so both directions go through a
bounded dictionary: a stack talks to few addresses, and the cache is simply emptied when it fills
(no eviction bookkeeping on the hot path).
"""

from __future__ import annotations

import socket
import struct
from typing import NamedTuple

from .errors import ChecksumError, MalformedPacket

__all__ = [
    "PROTO_ICMP",
    "PROTO_TCP",
    "IPV4_HEADER_LEN",
    "Ipv4Header",
    "parse_ipv4_header",
    "build_ipv4_header",
    "address_str",
    "address_int",
]

PROTO_ICMP = 1
PROTO_TCP = 6
IPV4_HEADER_LEN = 20
MAX_TOTAL_LEN = 0xFFFF

FLAG_DF = 0x4000
FLAG_MF = 0x2000
OFFSET_MASK = 0x1FFF

_HEADER = struct.Struct("!BBHHHBBHII")
_U32 = struct.Struct("!I")
_CACHE_LIMIT = 4096
_str_of: dict[int, str] = {}
_int_of: dict[str, int] = {}


def address_str(value: int) -> str:
    """Dotted quad of a 32-bit address, through the bounded cache."""
    try:
        return _str_of[value]
    except KeyError:
        pass
    text = socket.inet_ntoa(_U32.pack(value))
    if len(_str_of) >= _CACHE_LIMIT:
        _str_of.clear()
    _str_of[value] = text
    return text


def address_int(text: str) -> int:
    """32-bit value of a dotted-quad address, through the bounded cache."""
    try:
        return _int_of[text]
    except KeyError:
        pass
    try:
        packed = socket.inet_aton(text)
    except (OSError, TypeError):
        raise ValueError(f"not a dotted-quad IPv4 address: {text!r}") from None
    if socket.inet_ntoa(packed) != text:  # inet_aton also takes "10.1" and "0x0a.0.0.1"
        raise ValueError(f"not a canonical dotted-quad IPv4 address: {text!r}")
    value: int = _U32.unpack(packed)[0]
    if len(_int_of) >= _CACHE_LIMIT:
        _int_of.clear()
    _int_of[text] = value
    return value


class Ipv4Header(NamedTuple):
    """The decoded fields of an IPv4 header the codec needs (general, slow path)."""

    header_len: int
    tos: int
    total_len: int
    ip_id: int
    df: bool
    ttl: int
    protocol: int
    src: int
    dst: int


def parse_ipv4_header(buf: bytes | memoryview, verify_checksum: bool) -> Ipv4Header:
    """Decode and validate the IPv4 header at the start of ``buf``.

    IP options are allowed and skipped. Fragments are rejected: the stack does no reassembly and
    a TCP header cannot be trusted in a non-first fragment.
    """
    n = len(buf)
    if n < IPV4_HEADER_LEN:
        raise MalformedPacket(f"IPv4 header truncated: {n} octets, need {IPV4_HEADER_LEN}")
    vihl, tos, total_len, ip_id, frag, ttl, protocol, _csum, src, dst = _HEADER.unpack_from(buf)
    version = vihl >> 4
    if version != 4:
        raise MalformedPacket(f"unsupported IP version {version}")
    header_len = (vihl & 0x0F) * 4
    if header_len < IPV4_HEADER_LEN:
        raise MalformedPacket(f"IPv4 IHL {vihl & 0x0F} is below 5")
    if header_len > n:
        raise MalformedPacket(f"IPv4 IHL {vihl & 0x0F} ({header_len} octets) overruns the {n}-octet buffer")
    if total_len > n:
        raise MalformedPacket(f"IPv4 total length {total_len} is beyond the {n}-octet buffer")
    if total_len < header_len:
        raise MalformedPacket(f"IPv4 total length {total_len} is below the header length {header_len}")
    if frag & (FLAG_MF | OFFSET_MASK):
        raise MalformedPacket(
            f"IPv4 fragment (MF={int(bool(frag & FLAG_MF))}, offset={(frag & OFFSET_MASK) * 8}) "
            "is not supported"
        )
    if verify_checksum and int.from_bytes(buf[:header_len], "big") % 0xFFFF:
        raise ChecksumError(f"IPv4 header checksum 0x{_csum:04x} does not verify")
    return Ipv4Header(header_len, tos, total_len, ip_id, bool(frag & FLAG_DF), ttl, protocol, src, dst)


def build_ipv4_header(
    tos: int, total_len: int, ip_id: int, df: bool, ttl: int, protocol: int, src: int, dst: int
) -> bytes:
    """A 20-octet IPv4 header with its checksum."""
    frag = FLAG_DF if df else 0
    # One's complement sum of the header words, modulo 65535 (see checksum.py); never zero
    # because of the version nibble, so the negation below is the checksum, -0 included.
    s = 0x4500 + tos + total_len + ip_id + frag + (ttl << 8) + protocol + src + dst
    try:
        return _HEADER.pack(0x45, tos, total_len, ip_id, frag, ttl, protocol, -s % 0xFFFF, src, dst)
    except struct.error as exc:
        _check_range("tos", tos, 0xFF)
        _check_range("total length", total_len, MAX_TOTAL_LEN)
        _check_range("ip_id", ip_id, 0xFFFF)
        _check_range("ttl", ttl, 0xFF)
        raise ValueError(f"IPv4 header field out of range: {exc}") from exc


def _check_range(name: str, value: object, limit: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{name}={value!r} is out of range 0..{limit}")
