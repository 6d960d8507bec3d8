"""ICMP messages: echo, errors with quoted TCP headers, other types, checksums, errors."""

from __future__ import annotations

import struct

import attrs
import pytest

from tcpstack.wire import (
    ChecksumError,
    IcmpMessage,
    IcmpType,
    MalformedPacket,
    TcpFlags,
    TcpSegment,
    build_icmp,
    build_packet,
    internet_checksum,
    parse_packet,
)

OFFENDER = TcpSegment(src="192.168.0.1", dst="192.0.2.1", sport=8080, dport=51000,
                      seq=0xDEADBEEF, ack=1, flags=TcpFlags.ACK, payload=bytes(1400))


def test_echo_request_round_trip() -> None:
    msg = IcmpMessage(src="198.18.0.1", dst="198.18.0.2", type=IcmpType.ECHO_REQUEST, code=0,
                      ident=0x1234, sequence=7, quoted=b"ping data", ttl=64, ip_id=9)
    packet = build_icmp(msg)
    assert packet[9] == 1 and packet[20:22] == bytes((8, 0))
    assert struct.unpack_from("!HH", packet, 24) == (0x1234, 7)
    assert internet_checksum(packet[20:]) == 0 and internet_checksum(packet[:20]) == 0
    assert packet[6] & 0x40 == 0  # ICMP goes out without DF, as Linux sends it
    assert parse_packet(packet) == msg


def test_echo_reply_returns_the_data() -> None:
    request = parse_packet(build_icmp(IcmpMessage(
        src="198.18.0.1", dst="198.18.0.2", type=8, code=0, ident=1, sequence=2, quoted=b"abc")))
    assert isinstance(request, IcmpMessage)
    reply = attrs.evolve(request, src=request.dst, dst=request.src, type=IcmpType.ECHO_REPLY)
    parsed = parse_packet(build_icmp(reply))
    assert isinstance(parsed, IcmpMessage)
    assert (parsed.type, parsed.ident, parsed.sequence, parsed.quoted) == (0, 1, 2, b"abc")


def test_fragmentation_needed_quoting_a_real_segment() -> None:
    offending = build_packet(OFFENDER)
    msg = IcmpMessage(src="203.0.113.1", dst="192.168.0.1", type=IcmpType.DEST_UNREACHABLE,
                      code=4, next_hop_mtu=1280, quoted=offending[:28])
    parsed = parse_packet(build_icmp(msg))
    assert isinstance(parsed, IcmpMessage)
    assert parsed.next_hop_mtu == 1280
    assert (parsed.quoted_src, parsed.quoted_dst, parsed.quoted_protocol) == (
        "192.168.0.1", "192.0.2.1", 6)
    assert (parsed.quoted_sport, parsed.quoted_dport, parsed.quoted_seq) == (
        8080, 51000, 0xDEADBEEF)
    assert parsed.quoted == offending[:28]


@pytest.mark.parametrize("code", range(16))
def test_destination_unreachable_all_codes(code: int) -> None:
    msg = IcmpMessage(src="203.0.113.1", dst="192.168.0.1", type=3, code=code,
                      next_hop_mtu=576 if code == 4 else None, quoted=build_packet(OFFENDER)[:48])
    parsed = parse_packet(build_icmp(msg))
    assert isinstance(parsed, IcmpMessage)
    assert parsed.code == code and parsed.quoted_seq == OFFENDER.seq
    assert parsed.next_hop_mtu == (576 if code == 4 else None)


@pytest.mark.parametrize("icmp_type", [IcmpType.TIME_EXCEEDED, IcmpType.SOURCE_QUENCH])
def test_other_error_types_quote(icmp_type: int) -> None:
    msg = IcmpMessage(src="203.0.113.1", dst="192.168.0.1", type=icmp_type, code=0,
                      quoted=build_packet(OFFENDER)[:28])
    parsed = parse_packet(build_icmp(msg))
    assert isinstance(parsed, IcmpMessage)
    assert parsed.quoted_sport == 8080 and parsed.next_hop_mtu is None


def test_quote_synthesised_from_fields() -> None:
    msg = IcmpMessage(src="203.0.113.1", dst="192.168.0.1", type=3, code=3,
                      quoted_src="192.168.0.1", quoted_dst="192.0.2.1", quoted_protocol=6,
                      quoted_sport=8080, quoted_dport=51000, quoted_seq=42)
    parsed = parse_packet(build_icmp(msg))
    assert isinstance(parsed, IcmpMessage)
    assert len(parsed.quoted) == 28 and internet_checksum(parsed.quoted[:20]) == 0
    assert attrs.evolve(parsed, quoted=b"") == msg


def test_short_and_odd_quotes_leave_fields_unset() -> None:
    offending = build_packet(OFFENDER)
    cases = [
        (b"", (None, None, None)),
        (offending[:19], (None, None, None)),  # not even an IP header
        (offending[:27], ("192.168.0.1", 6, None)),  # IP header, 7 octets of TCP
        (b"\x65" + offending[1:28], (None, None, None)),  # not IPv4
    ]
    for quoted, (src, protocol, sport) in cases:
        msg = IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=11, code=0, quoted=quoted)
        parsed = parse_packet(build_icmp(msg))
        assert isinstance(parsed, IcmpMessage)
        assert (parsed.quoted_src, parsed.quoted_protocol, parsed.quoted_sport) == (
            src, protocol, sport)
        assert parsed.quoted == quoted


def test_quoted_udp_gives_no_tcp_fields() -> None:
    quote = bytearray(build_packet(OFFENDER)[:28])
    quote[9] = 17
    parsed = parse_packet(build_icmp(IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=3, code=3,
                                                 quoted=bytes(quote))))
    assert isinstance(parsed, IcmpMessage)
    assert parsed.quoted_protocol == 17 and parsed.quoted_sport is None


@pytest.mark.parametrize("icmp_type", [5, 12, 13, 42])
def test_other_types_parse_without_quote_fields(icmp_type: int) -> None:
    msg = IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=icmp_type, code=1,
                      quoted=build_packet(OFFENDER)[:28])
    parsed = parse_packet(build_icmp(msg))
    assert parsed == msg
    assert isinstance(parsed, IcmpMessage) and parsed.quoted_src is None


def test_odd_length_icmp_checksum() -> None:
    msg = IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=8, code=0, ident=1, sequence=1,
                      quoted=b"odd")
    packet = build_icmp(msg)
    assert internet_checksum(packet[20:]) == 0
    assert parse_packet(packet) == msg


def test_all_zero_echo_reply_checksum_is_ffff() -> None:
    # Type 0, code 0, ident 0, sequence 0, no data: the sum is +0, so the checksum is 0xFFFF.
    msg = IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=0, code=0, ident=0, sequence=0)
    packet = build_icmp(msg)
    assert packet[22:24] == b"\xff\xff"
    assert parse_packet(packet) == msg
    zeroed = bytearray(packet)
    zeroed[22:24] = b"\0\0"
    with pytest.raises(ChecksumError, match="ICMP checksum"):
        parse_packet(zeroed)


def test_bad_icmp_checksum() -> None:
    packet = bytearray(build_icmp(IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=8, code=0,
                                              ident=5, sequence=6)))
    packet[25] ^= 0xFF
    with pytest.raises(ChecksumError, match="ICMP checksum"):
        parse_packet(packet)
    parsed = parse_packet(packet, verify_checksum=False)
    assert isinstance(parsed, IcmpMessage) and parsed.ident == 5 ^ 0xFF


def test_icmp_shorter_than_its_header() -> None:
    packet = bytearray(build_icmp(IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=8, code=0)))
    packet = packet[:27]
    packet[2:4] = struct.pack("!H", 27)
    packet[10:12] = b"\0\0"
    packet[10:12] = struct.pack("!H", internet_checksum(bytes(packet[:20])))
    with pytest.raises(MalformedPacket, match="ICMP message truncated: 7 octets"):
        parse_packet(packet, verify_checksum=False)


def test_build_icmp_range_errors() -> None:
    with pytest.raises(ValueError, match="ICMP field out of range"):
        build_icmp(IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=8, code=0, ident=70000))
    with pytest.raises(ValueError, match="ttl=300"):
        build_icmp(IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=8, code=0, ttl=300))
    with pytest.raises(ValueError, match="exceeds the IPv4 maximum"):
        build_icmp(IcmpMessage(src="1.1.1.1", dst="2.2.2.2", type=8, code=0,
                               quoted=bytes(65535 - 27)))
