"""Value types of the wire layer: a TCP segment with its IPv4 fields, TCP options, ICMP messages.

These are the high-level representation (smoltcp's ``Repr``): frozen, slotted, hashable, and
compared by value. The codec in :mod:`tcpstack.wire.codec` turns bytes into these and back.

Addresses are stored as dotted-quad ``str``: they hash fast (the stack demultiplexes on them for
every packet) and print as people read them. ``ipaddress.IPv4Address`` and ``int`` are accepted
and normalised.
"""

from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

import attrs

__all__ = [
    "TcpFlags",
    "OptionKind",
    "SackBlock",
    "Timestamps",
    "TcpOptions",
    "NO_OPTIONS",
    "TcpSegment",
    "IcmpType",
    "IcmpMessage",
    "ECN_NOT_ECT",
    "ECN_ECT1",
    "ECN_ECT0",
    "ECN_CE",
    "to_address",
]


class TcpFlags(enum.IntFlag):
    """TCP header flags (RFC 9293 section 3.1, RFC 3168 for ECE/CWR)."""

    FIN = 0x01
    SYN = 0x02
    RST = 0x04
    PSH = 0x08
    ACK = 0x10
    URG = 0x20
    ECE = 0x40
    CWR = 0x80


class OptionKind(enum.IntEnum):
    """TCP option kinds the stack understands; others are kept as unknown options."""

    EOL = 0
    NOP = 1
    MSS = 2
    WSCALE = 3
    SACK_PERMITTED = 4
    SACK = 5
    TIMESTAMP = 8


# ECN codepoints in the two low bits of the IPv4 TOS byte (RFC 3168 section 5).
ECN_NOT_ECT = 0b00
ECN_ECT1 = 0b01
ECN_ECT0 = 0b10
ECN_CE = 0b11


class SackBlock(NamedTuple):
    """One SACK block: ``left`` is the first sequence number, ``right`` the one after the last."""

    left: int
    right: int


class Timestamps(NamedTuple):
    """The RFC 7323 timestamps option."""

    tsval: int
    tsecr: int


_pack_ipv4 = struct.Struct("!I").pack


def to_address(value: str | int | bytes | ipaddress.IPv4Address) -> str:
    """Normalise an IPv4 address to its dotted-quad string."""
    if type(value) is str:
        return value
    if isinstance(value, ipaddress.IPv4Address):
        return str(value)
    if isinstance(value, int):
        return socket.inet_ntoa(_pack_ipv4(value))
    if isinstance(value, bytes | bytearray | memoryview) and len(value) == 4:
        return socket.inet_ntoa(bytes(value))
    if isinstance(value, str):
        return str(ipaddress.IPv4Address(value))
    raise TypeError(f"not an IPv4 address: {value!r}")


def _to_sack_blocks(value: Iterable[SackBlock | tuple[int, int]]) -> tuple[SackBlock, ...]:
    if type(value) is tuple and all(type(b) is SackBlock for b in value):
        return value  # already normalised
    return tuple(SackBlock(int(b[0]), int(b[1])) for b in value)


def _to_timestamps(value: Timestamps | tuple[int, int] | None) -> Timestamps | None:
    if value is None or type(value) is Timestamps:
        return value
    if len(value) != 2:
        raise ValueError(f"timestamps must be a (tsval, tsecr) pair, got {value!r}")
    return Timestamps(int(value[0]), int(value[1]))


def _to_unknown(value: Iterable[tuple[int, bytes]]) -> tuple[tuple[int, bytes], ...]:
    return tuple((int(k), bytes(d)) for k, d in value)


def _to_layout(value: Iterable[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    return tuple(int(k) for k in value)


@attrs.frozen(slots=True)
class TcpOptions:
    """The options of one TCP header.

    ``layout`` is the order of option kinds on the wire, NOP and EOL included (for example Linux's
    SYN ``(2, 4, 8, 1, 3)``: mss, sackOK, TS, nop, wscale). The parser records it, so a segment
    rebuilt from a parsed one is byte-for-byte the same; the engine sets it from its behaviour
    profile. ``None`` means the codec's default order. It is not part of equality: two option sets
    with the same values are equal whatever their order (the lenient match of the conformance
    runner); compare ``layout`` too for the strict one.

    ``unknown`` keeps options of other kinds as ``(kind, data)`` with their data bytes verbatim.
    """

    mss: int | None = None
    wscale: int | None = None
    sack_permitted: bool = False
    sack_blocks: tuple[SackBlock, ...] = attrs.field(default=(), converter=_to_sack_blocks)
    timestamps: Timestamps | None = attrs.field(default=None, converter=_to_timestamps)
    unknown: tuple[tuple[int, bytes], ...] = attrs.field(default=(), converter=_to_unknown)
    layout: tuple[int, ...] | None = attrs.field(default=None, eq=False, converter=_to_layout)

    def is_empty(self) -> bool:
        return (
            self.mss is None
            and self.wscale is None
            and not self.sack_permitted
            and not self.sack_blocks
            and self.timestamps is None
            and not self.unknown
            and not self.layout
        )


NO_OPTIONS = TcpOptions()


def _to_flags(value: int) -> TcpFlags:
    return value if type(value) is TcpFlags else TcpFlags(value)


def _to_payload(value: bytes | bytearray | memoryview) -> bytes:
    return value if type(value) is bytes else bytes(value)


@attrs.frozen(slots=True)
class TcpSegment:
    """One TCP segment and the IPv4 header fields that matter to TCP.

    ``window`` is the raw 16-bit field (unscaled). ``tos`` is the whole TOS byte; its two low bits
    are the ECN codepoint (see :attr:`ecn`). ``df`` is the IPv4 don't-fragment bit.
    """

    src: str = attrs.field(converter=to_address)
    dst: str = attrs.field(converter=to_address)
    sport: int
    dport: int
    seq: int
    ack: int = 0
    flags: TcpFlags = attrs.field(default=TcpFlags(0), converter=_to_flags)
    window: int = 0
    urgent: int = 0
    options: TcpOptions = NO_OPTIONS
    payload: bytes = attrs.field(default=b"", converter=_to_payload)
    ttl: int = 64
    tos: int = 0
    ip_id: int = 0
    df: bool = True

    @property
    def ecn(self) -> int:
        """The ECN codepoint of the IP header (``ECN_NOT_ECT`` .. ``ECN_CE``)."""
        return self.tos & 0b11

    @property
    def seg_len(self) -> int:
        """SEG.LEN of RFC 9293: payload octets plus one for SYN and one for FIN."""
        flags = self.flags
        return len(self.payload) + (1 if flags & TcpFlags.SYN else 0) + (1 if flags & TcpFlags.FIN else 0)

    def __repr__(self) -> str:  # compact, tcpdump-like: the default repr is unreadable in logs
        flags = "".join(
            c for c, f in (("S", TcpFlags.SYN), ("F", TcpFlags.FIN), ("R", TcpFlags.RST),
                           ("P", TcpFlags.PSH), (".", TcpFlags.ACK), ("U", TcpFlags.URG),
                           ("E", TcpFlags.ECE), ("W", TcpFlags.CWR)) if self.flags & f
        ) or "-"
        return (
            f"TcpSegment({self.src}:{self.sport} > {self.dst}:{self.dport} {flags} "
            f"seq={self.seq} ack={self.ack} win={self.window} len={len(self.payload)} "
            f"opts={self.options!r})"
        )


class IcmpType(enum.IntEnum):
    """ICMPv4 message types the stack acts on (RFC 792)."""

    ECHO_REPLY = 0
    DEST_UNREACHABLE = 3
    SOURCE_QUENCH = 4
    ECHO_REQUEST = 8
    TIME_EXCEEDED = 11


@attrs.frozen(slots=True)
class IcmpMessage:
    """An ICMPv4 message.

    Error messages (destination unreachable, time exceeded, source quench) quote the offending
    datagram's IP header and at least the first 8 octets of its payload (RFC 792); for TCP those
    octets hold the ports and the sequence number, which is how the stack finds the connection.
    ``quoted_*`` fields are ``None`` when the quote does not hold them. ``next_hop_mtu`` is set for
    fragmentation-needed (type 3 code 4, RFC 1191); ``ident``/``sequence`` for echo.
    """

    src: str = attrs.field(converter=to_address)
    dst: str = attrs.field(converter=to_address)
    type: int
    code: int
    next_hop_mtu: int | None = None
    ident: int | None = None
    sequence: int | None = None
    quoted_src: str | None = None
    quoted_dst: str | None = None
    quoted_protocol: int | None = None
    quoted_sport: int | None = None
    quoted_dport: int | None = None
    quoted_seq: int | None = None
    quoted: bytes = b""
    ttl: int = 64
    tos: int = 0
    ip_id: int = 0
