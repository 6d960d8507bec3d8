"""Wire layer: IPv4/TCP/ICMP codecs, TCP options, the internet checksum and the value types.

Pure functions and frozen value types; no I/O, no clock. ``parse_packet`` turns a received IPv4
datagram into a :class:`TcpSegment` or :class:`IcmpMessage`; ``build_packet`` and ``build_icmp``
turn them back into bytes. Malformed input raises :class:`MalformedPacket` and nothing else.
"""

from .checksum import checksum_adjust, internet_checksum, ones_complement_sum, pseudo_header_sum
from .codec import build_packet, parse_packet
from .errors import ChecksumError, MalformedPacket
from .icmp import build_icmp
from .options import MAX_OPTIONS_LEN, decode_options, encode_options
from .segment import (
    ECN_CE,
    ECN_ECT0,
    ECN_ECT1,
    ECN_NOT_ECT,
    NO_OPTIONS,
    IcmpMessage,
    IcmpType,
    OptionKind,
    SackBlock,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    to_address,
)

__all__ = [
    "parse_packet",
    "build_packet",
    "build_icmp",
    "decode_options",
    "encode_options",
    "MAX_OPTIONS_LEN",
    "MalformedPacket",
    "ChecksumError",
    "internet_checksum",
    "ones_complement_sum",
    "pseudo_header_sum",
    "checksum_adjust",
    "TcpSegment",
    "TcpOptions",
    "TcpFlags",
    "OptionKind",
    "SackBlock",
    "Timestamps",
    "NO_OPTIONS",
    "IcmpMessage",
    "IcmpType",
    "ECN_NOT_ECT",
    "ECN_ECT1",
    "ECN_ECT0",
    "ECN_CE",
    "to_address",
]
