"""IPv4/TCP parse and build: field handling, input types, and one test per error path."""

from __future__ import annotations

import socket
import struct
from typing import Any

import attrs
import pytest

from tcpstack.wire import (
    NO_OPTIONS,
    ChecksumError,
    MalformedPacket,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    build_packet,
    codec,
    internet_checksum,
    parse_packet,
    pseudo_header_sum,
)
from tcpstack.wire._fast import OPTIONS_FIELDS, SEGMENT_FIELDS, new_options, new_segment

SEG = TcpSegment(
    src="192.0.2.1", dst="198.51.100.7", sport=40000, dport=80, seq=0xFFFFFFF0, ack=12345,
    flags=TcpFlags.ACK | TcpFlags.PSH, window=501, urgent=0, payload=b"hello, world",
    ttl=61, tos=0x02, ip_id=0xBEEF, df=True,
)


def with_ip_checksum(packet: bytearray) -> bytearray:
    """Recompute the IPv4 header checksum after a test edited the header."""
    header_len = (packet[0] & 0x0F) * 4
    packet[10:12] = b"\0\0"
    packet[10:12] = struct.pack("!H", internet_checksum(bytes(packet[:header_len])))
    return packet


def with_tcp_checksum(packet: bytearray) -> bytearray:
    """Recompute the TCP checksum after a test edited the segment (IHL 5 packets)."""
    packet[36:38] = b"\0\0"
    initial = pseudo_header_sum(
        socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), 6, len(packet) - 20
    )
    packet[36:38] = struct.pack("!H", internet_checksum(bytes(packet[20:]), initial))
    return packet


def test_round_trip_every_field() -> None:
    packet = build_packet(SEG)
    parsed = parse_packet(packet)
    assert parsed == SEG
    assert type(parsed) is TcpSegment
    for field in attrs.fields(TcpSegment):
        assert getattr(parsed, field.name) == getattr(SEG, field.name), field.name
    assert type(parsed.flags) is TcpFlags and type(parsed.payload) is bytes
    assert hash(parsed) == hash(SEG)


def test_wire_layout_of_a_built_packet() -> None:
    packet = build_packet(SEG)
    assert len(packet) == 20 + 20 + len(SEG.payload)
    assert packet[0] == 0x45 and packet[1] == 0x02
    assert struct.unpack_from("!HHH", packet, 2) == (52, 0xBEEF, 0x4000)
    assert packet[8:10] == bytes((61, 6))
    assert packet[12:20] == bytes((192, 0, 2, 1, 198, 51, 100, 7))
    assert packet[32] >> 4 == 5 and packet[33] == 0x18
    assert internet_checksum(packet[:20]) == 0


def test_parsed_segment_is_immutable_and_independent_of_the_buffer() -> None:
    buffer = bytearray(build_packet(SEG))
    parsed = parse_packet(buffer)
    buffer[40:] = b"X" * len(SEG.payload)  # the link reuses its receive buffer
    assert isinstance(parsed, TcpSegment)
    assert parsed.payload == b"hello, world"
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        parsed.seq = 1  # type: ignore[misc]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_input_types(kind: type) -> None:
    packet = build_packet(attrs.evolve(SEG, options=TcpOptions(timestamps=(1, 2))))
    assert parse_packet(kind(packet)) == parse_packet(packet)


def test_memoryview_of_other_format_and_non_contiguous() -> None:
    packet = build_packet(SEG)
    assert parse_packet(memoryview(packet).cast("c")) == SEG  # type: ignore[arg-type]
    doubled = bytes(b for byte in packet for b in (byte, 0))
    assert parse_packet(memoryview(doubled)[::2]) == SEG


def test_wrong_input_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bytes, bytearray or memoryview"):
        parse_packet("not bytes")  # type: ignore[arg-type]


def test_trailing_bytes_beyond_total_length_are_ignored() -> None:
    packet = build_packet(SEG)
    assert parse_packet(packet + bytes(18)) == SEG  # Ethernet minimum-frame padding


def test_ip_options_are_skipped() -> None:
    packet = bytearray(build_packet(SEG))
    # IHL 6 with one word of options (NOP, NOP, NOP, EOL); total length grows by 4.
    packet[0] = 0x46
    packet[2:4] = struct.pack("!H", len(packet) + 4)
    packet[20:20] = bytes((1, 1, 1, 0))
    parsed = parse_packet(with_ip_checksum(packet))
    assert parsed == SEG


def test_options_and_odd_payload_round_trip() -> None:
    segment = attrs.evolve(
        SEG, flags=TcpFlags.SYN, payload=b"odd",
        options=TcpOptions(mss=1460, wscale=7, sack_permitted=True, timestamps=(1, 0)),
    )
    packet = build_packet(segment)
    assert packet[32] >> 4 == 10  # 20 + 20 octets of options
    parsed = parse_packet(packet)
    assert parsed == segment and parsed.options.layout == (2, 4, 8, 1, 3)
    assert build_packet(parsed) == packet


def test_df_clear_and_reserved_bit_and_ecn() -> None:
    segment = attrs.evolve(SEG, df=False, tos=0x03)
    packet = bytearray(build_packet(segment))
    assert struct.unpack_from("!H", packet, 6)[0] == 0
    parsed = parse_packet(packet)
    assert isinstance(parsed, TcpSegment)
    assert parsed.df is False and parsed.ecn == 0b11
    packet[6] |= 0xC0  # reserved ("evil") bit and DF: not a fragment, DF set
    parsed = parse_packet(with_ip_checksum(packet))
    assert isinstance(parsed, TcpSegment)
    assert parsed.df is True


def test_build_without_tcp_checksum_and_parse_without_verification() -> None:
    packet = build_packet(SEG, checksum=False)
    assert packet[36:38] == b"\0\0"
    assert internet_checksum(packet[:20]) == 0  # the IP header checksum is always built
    with pytest.raises(ChecksumError, match="TCP checksum 0x0000"):
        parse_packet(packet)
    assert parse_packet(packet, verify_checksum=False) == SEG


def test_bad_ip_header_checksum() -> None:
    packet = bytearray(build_packet(SEG))
    packet[10] ^= 0x01
    with pytest.raises(ChecksumError, match="IPv4 header checksum"):
        parse_packet(packet)
    assert parse_packet(packet, verify_checksum=False) == SEG


@pytest.mark.parametrize("offset", [24, 33, 38, 40, 51])
def test_bad_tcp_checksum(offset: int) -> None:
    packet = bytearray(build_packet(SEG))
    packet[offset] ^= 0x40
    with pytest.raises(ChecksumError, match="TCP checksum"):
        parse_packet(packet)


def test_tcp_checksum_covers_the_pseudo_header() -> None:
    packet = bytearray(build_packet(SEG))
    packet[19] ^= 0x01  # destination address: fix the IP header sum, not the TCP one
    with pytest.raises(ChecksumError, match="TCP checksum"):
        parse_packet(with_ip_checksum(packet))


def test_zero_and_full_length_payloads() -> None:
    for size in (0, 1, 1460, 65535 - 40):
        segment = attrs.evolve(SEG, payload=bytes(range(256)) * (size // 256) + bytes(size % 256))
        assert parse_packet(build_packet(segment)) == segment


# -- parse errors: one per path ---------------------------------------------------------------


def expect_malformed(packet: bytes | bytearray, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        parse_packet(bytes(packet))
    with pytest.raises(MalformedPacket, match=message):
        parse_packet(bytes(packet), verify_checksum=False)


@pytest.mark.parametrize("length", [0, 1, 19])
def test_short_buffer(length: int) -> None:
    expect_malformed(build_packet(SEG)[:length], f"IPv4 header truncated: {length} octets")


def test_unsupported_ip_version() -> None:
    packet = bytearray(build_packet(SEG))
    packet[0] = 0x65
    expect_malformed(packet, "unsupported IP version 6")


def test_ihl_below_five() -> None:
    packet = bytearray(build_packet(SEG))
    packet[0] = 0x44
    expect_malformed(packet, "IPv4 IHL 4 is below 5")


def test_ihl_beyond_buffer() -> None:
    packet = bytearray(build_packet(SEG)[:30])
    packet[0] = 0x4F
    expect_malformed(packet, "IPv4 IHL 15 .60 octets. overruns the 30-octet buffer")


def test_total_length_beyond_buffer() -> None:
    packet = build_packet(SEG)
    expect_malformed(packet[:-1], f"IPv4 total length {len(packet)} is beyond the")


def test_total_length_below_header_length() -> None:
    packet = bytearray(build_packet(SEG))
    packet[2:4] = struct.pack("!H", 16)
    expect_malformed(with_ip_checksum(packet), "IPv4 total length 16 is below the header length 20")


@pytest.mark.parametrize(("field", "described"), [(0x2000, "MF=1, offset=0"),
                                                  (0x0001, "MF=0, offset=8"),
                                                  (0x6010, "MF=1, offset=128"),
                                                  (0x4100, "MF=0, offset=2048")])
def test_fragments_are_rejected(field: int, described: str) -> None:
    packet = bytearray(build_packet(SEG))
    packet[6:8] = struct.pack("!H", field)
    expect_malformed(with_ip_checksum(packet), f"fragment \\({described}\\)")


def test_unsupported_protocol() -> None:
    packet = bytearray(build_packet(SEG))
    packet[9] = 17
    expect_malformed(with_ip_checksum(packet), "unsupported IP protocol 17")


def test_tcp_header_truncated() -> None:
    packet = bytearray(build_packet(attrs.evolve(SEG, payload=b""))[:39])
    packet[2:4] = struct.pack("!H", 39)
    expect_malformed(with_ip_checksum(packet), "TCP header truncated: 19 octets")


@pytest.mark.parametrize("data_offset", [0, 4])
def test_data_offset_below_five(data_offset: int) -> None:
    packet = bytearray(build_packet(SEG))
    packet[32] = data_offset << 4
    expect_malformed(packet, f"TCP data offset {data_offset} is below 5")


def test_data_offset_beyond_the_segment() -> None:
    packet = bytearray(build_packet(attrs.evolve(SEG, payload=b"abc")))
    packet[32] = 6 << 4  # 24 octets, but the segment holds 23
    expect_malformed(packet, "TCP data offset 6 .24 octets. is beyond the 23-octet segment")


def test_malformed_option_inside_a_packet() -> None:
    packet = bytearray(build_packet(attrs.evolve(SEG, options=TcpOptions(mss=1460))))
    packet[41] = 0  # MSS option length 0
    expect_malformed(with_tcp_checksum(packet), "option length 0 is below 2")


def test_malformed_option_with_a_bad_checksum_is_a_checksum_error() -> None:
    # Options are decoded after the checksum is verified, so corruption is named as such.
    packet = bytearray(build_packet(attrs.evolve(SEG, options=TcpOptions(mss=1460))))
    packet[41] = 0
    with pytest.raises(ChecksumError, match="TCP checksum"):
        parse_packet(bytes(packet))


def test_lengths_are_checked_against_total_length_not_the_padded_buffer() -> None:
    # Ethernet pads short frames: a buffer long enough for the straight path whose datagram is
    # not must still be rejected for what the datagram holds.
    short = bytearray(build_packet(attrs.evolve(SEG, payload=b""))[:39])
    short[2:4] = struct.pack("!H", 39)
    expect_malformed(with_ip_checksum(short) + bytes(21), "TCP header truncated: 19 octets")
    offset_8 = bytearray(build_packet(attrs.evolve(SEG, payload=b"")))
    offset_8[32] = 8 << 4  # claims 32 octets of header in a 20-octet segment
    padding = bytes((1, 1, 8, 10)) + bytes(8)  # as if the missing options were in the padding
    expect_malformed(offset_8 + padding, "TCP data offset 8 .32 octets. is beyond the 20-octet")


@pytest.mark.parametrize("options", [
    TcpOptions(timestamps=(7, 8)),  # NOP, NOP, TS: the straight path's layout
    TcpOptions(timestamps=(7, 8), layout=(8, 1, 1)),  # same length, decoded in general
    TcpOptions(mss=1460, wscale=7, sack_permitted=True, layout=(2, 1, 3, 4, 1, 1)),
])
def test_data_offset_8_layouts(options: TcpOptions) -> None:
    segment = attrs.evolve(SEG, options=options)
    packet = build_packet(segment)
    assert packet[32] == 8 << 4
    parsed = parse_packet(packet)
    assert parsed == segment and isinstance(parsed, TcpSegment)
    assert parsed.options.layout == (options.layout or (1, 1, 8))
    assert build_packet(parsed) == packet


@pytest.mark.parametrize("options", [NO_OPTIONS, TcpOptions(timestamps=(7, 8))])
@pytest.mark.parametrize("reserved", [0x01, 0x0E, 0x0F])
def test_reserved_bits_of_the_data_offset_octet_are_ignored(options: TcpOptions, reserved: int) -> None:
    segment = attrs.evolve(SEG, options=options)
    packet = bytearray(build_packet(segment, checksum=False))
    packet[32] |= reserved
    assert parse_packet(packet, verify_checksum=False) == segment


def test_flow_cache_is_bounded_and_keyed_on_addresses_and_ports() -> None:
    codec._flow_of.clear()
    limit = codec._FLOW_CACHE_LIMIT
    for sport in range(1, limit + 2):
        segment = attrs.evolve(SEG, sport=sport, dst=f"10.{sport >> 8}.{sport & 0xFF}.1")
        parsed = parse_packet(build_packet(segment))
        assert parsed == segment  # a key mix-up would give another flow's ports or addresses
    assert 0 < len(codec._flow_of) <= limit
    assert parse_packet(build_packet(SEG)) == SEG
    assert parse_packet(build_packet(attrs.evolve(SEG, src=SEG.dst, dst=SEG.src))).src == SEG.dst


# -- build errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sport": 65536}, "sport=65536"),
        ({"dport": -1}, "dport=-1"),
        ({"seq": 2**32}, "seq=4294967296"),
        ({"ack": -5}, "ack=-5"),
        ({"window": 70000}, "window=70000"),
        ({"urgent": 65536}, "urgent=65536"),
        ({"ttl": 256}, "ttl=256"),
        ({"tos": 300}, "tos=300"),
        ({"ip_id": 65536}, "ip_id=65536"),
    ],
)
def test_build_names_out_of_range_fields(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        build_packet(attrs.evolve(SEG, **changes))


def test_build_rejects_oversized_datagram() -> None:
    with pytest.raises(ValueError, match="exceeds the IPv4 maximum 65535"):
        build_packet(attrs.evolve(SEG, payload=bytes(65535 - 39)))


def test_build_rejects_non_canonical_address() -> None:
    with pytest.raises(ValueError, match="dotted-quad"):
        build_packet(attrs.evolve(SEG, src="10.1"))


def test_build_rejects_too_many_options() -> None:
    options = TcpOptions(mss=1, timestamps=(1, 1), sack_blocks=[(1, 2)] * 4)
    with pytest.raises(ValueError, match="more than the 40"):
        build_packet(attrs.evolve(SEG, options=options))


# -- the fast constructors --------------------------------------------------------------------


def test_fast_constructors_cover_every_field() -> None:
    assert set(SEGMENT_FIELDS) == {field.name for field in attrs.fields(TcpSegment)}
    assert set(OPTIONS_FIELDS) == {field.name for field in attrs.fields(TcpOptions)}
    options = new_options(1460, 7, True, (), Timestamps(1, 2), ((99, b"x"),), (2, 3, 4, 8, 99))
    assert type(options) is TcpOptions
    assert options == TcpOptions(1460, 7, True, (), (1, 2), [(99, b"x")], (2, 3, 4, 8, 99))
    values = [getattr(SEG, name) for name in SEGMENT_FIELDS]
    fast = new_segment(*values)
    assert type(fast) is TcpSegment and fast == SEG and hash(fast) == hash(SEG)
    assert attrs.asdict(fast) == attrs.asdict(SEG)
    assert attrs.evolve(fast, seq=1) == attrs.evolve(SEG, seq=1)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.seq = 1  # type: ignore[misc]


def test_fast_path_and_general_path_agree() -> None:
    # IHL 6 forces the general path; IHL 5 takes the fast one. Same segment either way.
    for options in (NO_OPTIONS, TcpOptions(timestamps=(3, 4)), TcpOptions(mss=9000)):
        segment = attrs.evolve(SEG, options=options)
        packet = bytearray(build_packet(segment))
        fast = parse_packet(packet)
        packet[0] = 0x46
        packet[2:4] = struct.pack("!H", len(packet) + 4)
        packet[20:20] = bytes(4)
        general = parse_packet(with_ip_checksum(packet))
        assert fast == general == segment
        assert isinstance(fast, TcpSegment) and isinstance(general, TcpSegment)
        assert fast.options.layout == general.options.layout
