"""ICMPv4 messages (RFC 792; RFC 1191 for fragmentation-needed).

Error messages (destination unreachable, source quench, time exceeded) quote the IP header and
the first octets of the datagram that caused them; for TCP those octets hold the ports and the
sequence number, which is all the stack needs to find the connection (RFC 5927). The decoder reads
as much of the quote as is present and leaves the rest ``None``: a short quote is legal, and is
not a reason to drop the message.

``IcmpMessage.quoted`` holds the octets after the 8-octet ICMP header: the quoted datagram of an
error message, the data of an echo request or reply (which an echo reply must return), and the
body of any other type.
"""

from __future__ import annotations

import struct

from .checksum import checksum_of_sum, sum_congruent, sum_verifies
from .errors import ChecksumError, MalformedPacket
from .ipv4 import (
    PROTO_ICMP,
    PROTO_TCP,
    address_int,
    address_str,
    build_ipv4_header,
)
from .segment import IcmpMessage, IcmpType

__all__ = ["parse_icmp", "build_icmp", "ICMP_HEADER_LEN", "FRAG_NEEDED"]

ICMP_HEADER_LEN = 8
FRAG_NEEDED = 4  # destination unreachable code: fragmentation needed and DF set

_ECHO = frozenset({IcmpType.ECHO_REQUEST.value, IcmpType.ECHO_REPLY.value})
_ERRORS = frozenset(
    {IcmpType.DEST_UNREACHABLE.value, IcmpType.SOURCE_QUENCH.value, IcmpType.TIME_EXCEEDED.value}
)
_HEADER = struct.Struct("!BBHHH")
_QUOTED_IP = struct.Struct("!BBHHHBBHII")
_QUOTED_TCP = struct.Struct("!HHI")


def parse_icmp(
    icmp: bytes, src: int, dst: int, ttl: int, tos: int, ip_id: int, verify_checksum: bool
) -> IcmpMessage:
    """Decode the ICMP part of a datagram (``icmp`` starts at the ICMP header)."""
    if len(icmp) < ICMP_HEADER_LEN:
        raise MalformedPacket(
            f"ICMP message truncated: {len(icmp)} octets, need {ICMP_HEADER_LEN}"
        )
    icmp_type, code, csum, word1, word2 = _HEADER.unpack_from(icmp)
    if verify_checksum and not sum_verifies(sum_congruent(icmp)):
        raise ChecksumError(f"ICMP checksum 0x{csum:04x} does not verify")
    body = icmp[ICMP_HEADER_LEN:]
    next_hop_mtu = ident = sequence = None
    quoted_src = quoted_dst = None
    quoted_protocol = quoted_sport = quoted_dport = quoted_seq = None
    if icmp_type in _ECHO:
        ident, sequence = word1, word2
    elif icmp_type in _ERRORS:
        if icmp_type == IcmpType.DEST_UNREACHABLE and code == FRAG_NEEDED:
            next_hop_mtu = word2
        if len(body) >= 20 and body[0] >> 4 == 4:
            vihl, _, _, _, _, _, quoted_protocol, _, qsrc, qdst = _QUOTED_IP.unpack_from(body)
            quoted_src = address_str(qsrc)
            quoted_dst = address_str(qdst)
            qhl = (vihl & 0x0F) * 4
            if quoted_protocol == PROTO_TCP and qhl >= 20 and len(body) >= qhl + 8:
                quoted_sport, quoted_dport, quoted_seq = _QUOTED_TCP.unpack_from(body, qhl)
    return IcmpMessage(
        src=address_str(src),
        dst=address_str(dst),
        type=icmp_type,
        code=code,
        next_hop_mtu=next_hop_mtu,
        ident=ident,
        sequence=sequence,
        quoted_src=quoted_src,
        quoted_dst=quoted_dst,
        quoted_protocol=quoted_protocol,
        quoted_sport=quoted_sport,
        quoted_dport=quoted_dport,
        quoted_seq=quoted_seq,
        quoted=bytes(body),
        ttl=ttl,
        tos=tos,
        ip_id=ip_id,
    )


def _synthesised_quote(msg: IcmpMessage) -> bytes:
    """A quote built from the ``quoted_*`` fields: a 20-octet IP header and 8 TCP octets.

    Lets tests and the conformance runner inject an ICMP error "about" a segment without
    building that segment first. The quoted total length is that of a bare 20-octet TCP header.
    """
    if msg.quoted_src is None or msg.quoted_dst is None:
        return b""
    protocol = PROTO_TCP if msg.quoted_protocol is None else msg.quoted_protocol
    has_ports = msg.quoted_sport is not None and msg.quoted_dport is not None
    header = build_ipv4_header(
        0, 40, 0, True, 64, protocol, address_int(msg.quoted_src), address_int(msg.quoted_dst)
    )
    if not has_ports:
        return header
    seq = 0 if msg.quoted_seq is None else msg.quoted_seq
    try:
        return header + _QUOTED_TCP.pack(msg.quoted_sport, msg.quoted_dport, seq)
    except struct.error as exc:
        raise ValueError(
            f"quoted sport/dport/seq out of range: {msg.quoted_sport}, {msg.quoted_dport}, {seq}"
        ) from exc


def build_icmp(msg: IcmpMessage) -> bytes:
    """Encode ``msg`` as an IPv4 datagram (DF clear, as Linux sends ICMP) with both checksums.

    The body is ``msg.quoted``; for an error message with an empty ``quoted`` and the
    ``quoted_*`` fields set, a minimal quote is synthesised from them. The second header word
    carries ``ident``/``sequence`` for echo and ``next_hop_mtu`` for fragmentation-needed; it is
    zero otherwise.
    """
    icmp_type = msg.type
    word1 = word2 = 0
    if icmp_type in _ECHO:
        word1 = 0 if msg.ident is None else msg.ident
        word2 = 0 if msg.sequence is None else msg.sequence
    elif icmp_type == IcmpType.DEST_UNREACHABLE and msg.code == FRAG_NEEDED:
        word2 = 0 if msg.next_hop_mtu is None else msg.next_hop_mtu
    body = msg.quoted
    if not body and icmp_type in _ERRORS:
        body = _synthesised_quote(msg)
    try:
        header = _HEADER.pack(icmp_type, msg.code, 0, word1, word2)
    except struct.error as exc:
        raise ValueError(
            f"ICMP field out of range: type={icmp_type} code={msg.code} "
            f"ident/sequence/next_hop_mtu={word1}/{word2}"
        ) from exc
    total_len = 20 + ICMP_HEADER_LEN + len(body)
    if total_len > 0xFFFF:
        raise ValueError(f"ICMP message of {total_len} octets exceeds the IPv4 maximum 65535")
    csum = checksum_of_sum(sum_congruent(header) + sum_congruent(body))
    ip_header = build_ipv4_header(
        msg.tos, total_len, msg.ip_id, False, msg.ttl, PROTO_ICMP,
        address_int(msg.src), address_int(msg.dst),
    )
    return b"".join((ip_header, _HEADER.pack(icmp_type, msg.code, csum, word1, word2), body))
