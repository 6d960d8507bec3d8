"""Bad input never raises anything but MalformedPacket (random bytes and mutated packets)."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st
from wire_strategies import icmp_messages, tcp_segments

from tcpstack.wire import (
    IcmpMessage,
    MalformedPacket,
    TcpSegment,
    build_icmp,
    build_packet,
    parse_packet,
)


def parse_or_malformed(data: bytes) -> None:
    for verify in (True, False):
        try:
            result = parse_packet(data, verify_checksum=verify)
        except MalformedPacket:
            continue
        assert isinstance(result, TcpSegment | IcmpMessage)


@settings(max_examples=1000)
@given(st.binary(max_size=120))
@example(b"\x45" + bytes(39))
@example(b"\x4f" + bytes(59))
def test_random_bytes(data: bytes) -> None:
    parse_or_malformed(data)


@st.composite
def mutated_packets(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        packet = bytearray(build_packet(draw(tcp_segments(max_payload=64))))
    else:
        packet = bytearray(build_icmp(draw(icmp_messages())))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "extend"]))
        if action == "flip" and packet:
            index = draw(st.integers(0, len(packet) - 1))
            packet[index] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and packet:
            # Header octets matter most: bias mutations to the first 60.
            index = draw(st.integers(0, min(len(packet), 60) - 1))
            packet[index] = draw(st.integers(0, 255))
        elif action == "truncate":
            del packet[draw(st.integers(0, len(packet))):]
        else:
            packet += draw(st.binary(max_size=8))
    return bytes(packet)


@settings(max_examples=1000)
@given(mutated_packets())
def test_mutated_valid_packets(data: bytes) -> None:
    parse_or_malformed(data)
