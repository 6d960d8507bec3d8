"""The virtio-net header codec and the offload head the TUN link writes before a TCP packet.

The device side is modelled here as Linux implements it, so that what the link writes is checked
against what the kernel will do with it: NEEDS_CSUM completion (``skb_checksum_help``: sum from
``csum_start`` to the end, store the complement at ``csum_start + csum_offset``) and TCP GSO
(``tcp_gso_segment``: every segment gets the headers, ``gso_size`` octets of payload, its own
sequence number, IP length, IP id and checksums; FIN and PSH only on the last, CWR only on the
first).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import tcp_options

from tcpstack.wire import (
    IcmpMessage,
    IcmpType,
    MalformedPacket,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    build_icmp,
    build_packet,
    internet_checksum,
    parse_packet,
    pseudo_header_sum,
)
from tcpstack.wire.vnet import (
    GSO_ECN,
    VNET_HDR_LEN,
    GsoType,
    VirtioNetHdr,
    VnetFlags,
    _tcp_offload_head_general,
    checksums_ok,
    encode_vnet_hdr,
    parse_vnet_hdr,
    plain_head,
    tcp_offload_head,
)

MTU = 1500
TS = TcpOptions(timestamps=Timestamps(123456, 654321))


def segment(payload: bytes, *, flags: TcpFlags = TcpFlags.ACK | TcpFlags.PSH,
            options: TcpOptions = TS, seq: int = 1000) -> TcpSegment:
    return TcpSegment(
        src="198.18.254.2", dst="198.18.7.2", sport=40000, dport=8080, seq=seq, ack=77,
        flags=flags, window=1024, payload=payload, options=options, ip_id=0x1234, df=True,
    )


def parse_tcp(packet: bytes) -> TcpSegment:
    seg = parse_packet(packet, verify_checksum=True)
    assert isinstance(seg, TcpSegment)
    return seg


def written(packet: bytes, mtu: int = MTU) -> bytes:
    """The octets the link writes for ``packet``: head then the rest of the packet."""
    head, rest, _ = tcp_offload_head(packet, mtu)
    return head + packet[rest:]


def complete_checksum(frame: bytes) -> tuple[VirtioNetHdr, bytes]:
    """What the kernel does with NEEDS_CSUM: sum the region and store the complement."""
    hdr = parse_vnet_hdr(frame)
    packet = bytearray(frame[VNET_HDR_LEN:])
    assert hdr.flags & VnetFlags.NEEDS_CSUM
    at = hdr.csum_start + hdr.csum_offset
    # The field's pseudo-header sum is part of the region, which is the whole point.
    packet[at:at + 2] = struct.pack("!H", internet_checksum(bytes(packet[hdr.csum_start:])))
    return hdr, bytes(packet)


def gso_segment(hdr: VirtioNetHdr, packet: bytes) -> list[bytes]:
    """Linux tcp_gso_segment + inet_gso_segment on a completed-header GSO packet."""
    ihl = (packet[0] & 0x0F) * 4
    headers = hdr.hdr_len
    thl = headers - ihl
    payload = packet[headers:]
    src, dst = packet[12:16], packet[16:20]
    (ip_id,) = struct.unpack_from("!H", packet, 4)
    (seq,) = struct.unpack_from("!I", packet, ihl + 4)
    flags = packet[ihl + 13]
    pieces = [payload[i:i + hdr.gso_size] for i in range(0, len(payload), hdr.gso_size)]
    out = []
    for index, piece in enumerate(pieces):
        ip = bytearray(packet[:ihl])
        tcp = bytearray(packet[ihl:headers])
        struct.pack_into("!HH", ip, 2, headers + len(piece), (ip_id + index) & 0xFFFF)
        ip[10:12] = b"\0\0"
        ip[10:12] = struct.pack("!H", internet_checksum(bytes(ip)))
        struct.pack_into("!I", tcp, 4, (seq + index * hdr.gso_size) & 0xFFFFFFFF)
        f = flags
        if index != len(pieces) - 1:
            f &= ~(TcpFlags.FIN | TcpFlags.PSH)
        if index != 0:
            f &= ~TcpFlags.CWR
        tcp[13] = f
        tcp[16:18] = b"\0\0"
        pseudo = pseudo_header_sum(
            ".".join(map(str, src)), ".".join(map(str, dst)), 6, thl + len(piece)
        )
        tcp[16:18] = struct.pack("!H", internet_checksum(bytes(tcp) + piece, pseudo))
        out.append(bytes(ip + tcp + piece))
    return out


# ---------------------------------------------------------------------- header codec


def test_header_layout_is_little_endian_as_the_link_configures_the_device() -> None:
    hdr = VirtioNetHdr(VnetFlags.NEEDS_CSUM, GsoType.TCPV4, True, 52, 1448, 20, 16)
    assert encode_vnet_hdr(hdr) == bytes.fromhex("0181 3400 a805 1400 1000")
    assert parse_vnet_hdr(encode_vnet_hdr(hdr)) == hdr


@settings(max_examples=100)
@given(
    st.sampled_from(list(VnetFlags)), st.sampled_from(list(GsoType)), st.booleans(),
    st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)
def test_header_round_trip(flags: VnetFlags, gso: GsoType, ecn: bool, hdr_len: int,
                           gso_size: int, start: int, offset: int) -> None:
    hdr = VirtioNetHdr(flags, gso, ecn, hdr_len, gso_size, start, offset)
    raw = encode_vnet_hdr(hdr)
    assert len(raw) == VNET_HDR_LEN
    assert parse_vnet_hdr(raw + b"trailing packet") == hdr


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x01\x01\x00", "truncated"),
        (bytes([0x08, 0, 0, 0, 0, 0, 0, 0, 0, 0]), "unknown bits"),
        (bytes([0, 2, 0, 0, 0, 0, 0, 0, 0, 0]), "gso_type 0x02"),
        (bytes([0, 0x86, 0, 0, 0, 0, 0, 0, 0, 0]), "gso_type 0x86"),
    ],
)
def test_header_errors_name_the_field(raw: bytes, message: str) -> None:
    with pytest.raises(MalformedPacket, match=message):
        parse_vnet_hdr(raw)


def test_header_rejects_fields_beyond_16_bits() -> None:
    with pytest.raises(ValueError, match="gso_size"):
        VirtioNetHdr(gso_size=0x10000)


# ---------------------------------------------------------------------- checksum offload


def test_small_segment_gets_needs_csum_and_the_pseudo_header_sum() -> None:
    packet = build_packet(segment(b"x" * 100), checksum=False)
    head, rest, gso = tcp_offload_head(packet, MTU)
    hdr = parse_vnet_hdr(head)
    assert not gso
    assert hdr == VirtioNetHdr(VnetFlags.NEEDS_CSUM, GsoType.NONE, False, 52, 0, 20, 16)
    assert rest == 38
    field = struct.unpack_from("!H", head, VNET_HDR_LEN + 36)[0]
    assert field == pseudo_header_sum("198.18.254.2", "198.18.7.2", 6, 32 + 100)


@settings(max_examples=60)
@given(options=tcp_options(), payload=st.binary(max_size=1400), stale=st.integers(0, 0xFFFF))
def test_completed_checksum_equals_a_software_checksum(
    options: TcpOptions, payload: bytes, stale: int
) -> None:
    seg = segment(payload, options=options)
    packet = bytearray(build_packet(seg, checksum=False))
    packet[36:38] = struct.pack("!H", stale)  # whatever the field held is replaced
    frame = written(bytes(packet), mtu=65535)
    hdr, completed = complete_checksum(frame)
    assert hdr.gso_type is GsoType.NONE
    assert completed == build_packet(seg, checksum=True)
    assert parse_packet(completed, verify_checksum=True) == seg


# ---------------------------------------------------------------------- segmentation offload


def test_super_segment_is_cut_into_mtu_sized_segments_that_verify() -> None:
    payload = bytes(range(256)) * 60  # 15360 octets: 10 full segments of 1448 and a tail
    seg = segment(payload, flags=TcpFlags.ACK | TcpFlags.PSH | TcpFlags.FIN, seq=0xFFFFF000)
    frame = written(build_packet(seg, checksum=False))
    hdr, completed = complete_checksum(frame)
    assert (hdr.gso_type, hdr.gso_size, hdr.hdr_len, hdr.ecn) == (GsoType.TCPV4, 1448, 52, False)
    pieces = gso_segment(hdr, completed)
    assert len(pieces) == 11
    parsed = [parse_tcp(p) for p in pieces]
    assert all(len(p) <= MTU for p in pieces) and len(pieces[0]) == MTU
    assert b"".join(s.payload for s in parsed) == payload
    assert [s.seq for s in parsed] == [(0xFFFFF000 + 1448 * i) & 0xFFFFFFFF for i in range(11)]
    assert all(s.options == TS for s in parsed)
    assert [bool(s.flags & TcpFlags.FIN) for s in parsed] == [False] * 10 + [True]


def test_gso_size_follows_the_options_of_the_packet() -> None:
    plain = build_packet(segment(b"y" * 5000, options=TcpOptions()), checksum=False)
    hdr = parse_vnet_hdr(tcp_offload_head(plain, MTU)[0])
    assert (hdr.gso_size, hdr.hdr_len) == (1460, 40)
    jumbo = build_packet(segment(b"y" * 20000), checksum=False)
    assert parse_vnet_hdr(tcp_offload_head(jumbo, 9000)[0]).gso_size == 9000 - 52


def test_exactly_one_segment_of_payload_is_not_gso() -> None:
    packet = build_packet(segment(b"z" * 1448), checksum=False)
    assert len(packet) == MTU
    head, _, gso = tcp_offload_head(packet, MTU)
    assert not gso and parse_vnet_hdr(head).gso_type is GsoType.NONE
    bigger = build_packet(segment(b"z" * 1449), checksum=False)
    assert tcp_offload_head(bigger, MTU)[2]


def test_cwr_sets_the_ecn_bit_and_stays_on_the_first_segment_only() -> None:
    seg = segment(b"e" * 4000, flags=TcpFlags.ACK | TcpFlags.CWR | TcpFlags.ECE)
    frame = written(build_packet(seg, checksum=False))
    assert frame[1] == GsoType.TCPV4 | GSO_ECN
    hdr, completed = complete_checksum(frame)
    assert hdr.ecn
    flags = [parse_tcp(p).flags for p in gso_segment(hdr, completed)]
    assert [bool(f & TcpFlags.CWR) for f in flags] == [True, False, False]
    assert all(f & TcpFlags.ECE for f in flags)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p[:30], "not an IPv4/TCP"),
        (lambda p: b"\x60" + p[1:], "not an IPv4/TCP"),
        (lambda p: p[:9] + b"\x11" + p[10:], "protocol 17"),
        (lambda p: p[:6] + b"\x20\x00" + p[8:], "fragment"),
        (lambda p: p[:6] + b"\x00\x10" + p[8:], "fragment"),
        (lambda p: p + b"pad", "total length"),
        (lambda p: p[:32] + b"\xf0" + p[33:], "data offset 15"),
        (lambda p: p[:32] + b"\x30" + p[33:], "data offset 3"),
    ],
)
def test_offload_refuses_what_it_cannot_describe(mutate: object, message: str) -> None:
    packet = build_packet(segment(b"q" * 10), checksum=False)
    with pytest.raises(ValueError, match=message):
        tcp_offload_head(mutate(packet), MTU)  # type: ignore[operator]


@settings(max_examples=60)
@given(
    payload_len=st.integers(0, 5000), mtu=st.integers(68, 9000), options=tcp_options(),
    flags=st.sampled_from([TcpFlags.ACK, TcpFlags.ACK | TcpFlags.CWR | TcpFlags.PSH,
                           TcpFlags.FIN | TcpFlags.ACK]),
)
def test_fast_path_agrees_with_the_general_path(
    payload_len: int, mtu: int, options: TcpOptions, flags: TcpFlags
) -> None:
    packet = build_packet(segment(b"\xa5" * payload_len, flags=flags, options=options),
                          checksum=False)
    try:
        expected = _tcp_offload_head_general(packet, mtu)
    except ValueError as exc:
        with pytest.raises(ValueError, match=str(exc)):
            tcp_offload_head(packet, mtu)
    else:
        assert tcp_offload_head(packet, mtu) == expected


def test_a_packet_with_ip_options_is_offloaded_from_its_real_header_length() -> None:
    plain = build_packet(segment(b"o" * 3000), checksum=False)
    # IHL 6: one word of IP options (NOP, NOP, NOP, EOL) before the TCP header.
    header = bytearray(plain[:20] + b"\x01\x01\x01\x00")
    header[0] = 0x46
    struct.pack_into("!H", header, 2, len(plain) + 4)
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", internet_checksum(bytes(header)))
    packet = bytes(header) + plain[20:]
    head, rest, gso = tcp_offload_head(packet, MTU)
    hdr, completed = complete_checksum(head + packet[rest:])
    assert gso and (hdr.csum_start, hdr.hdr_len, hdr.gso_size) == (24, 56, MTU - 56)
    assert checksums_ok(completed)


def test_plain_head_asks_for_nothing() -> None:
    assert parse_vnet_hdr(plain_head()) == VirtioNetHdr()


# ---------------------------------------------------------------------- software verification


def test_checksums_ok_accepts_valid_and_rejects_corrupt_tcp() -> None:
    packet = build_packet(segment(b"payload" * 30))
    assert checksums_ok(packet)
    assert not checksums_ok(packet[:-1] + bytes([packet[-1] ^ 0x01]))
    assert not checksums_ok(packet[:8] + bytes([packet[8] - 1]) + packet[9:])  # TTL: IP header
    assert not checksums_ok(build_packet(segment(b"payload" * 30), checksum=False))
    assert not checksums_ok(packet[:30])  # shorter than its total length


def test_checksums_ok_handles_icmp_and_udp() -> None:
    icmp = build_icmp(IcmpMessage(src="198.18.7.2", dst="198.18.254.2",
                                  type=IcmpType.ECHO_REQUEST, code=0, ident=7, sequence=1,
                                  quoted=b"ping"))
    assert checksums_ok(icmp)
    assert not checksums_ok(icmp[:-1] + b"q")
    udp_header = struct.pack("!HHHH", 53, 5353, 12, 0) + b"dns!"  # checksum 0: none (RFC 768)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 32, 1, 0, 64, 17, 0,
                               bytes([198, 18, 7, 2]), bytes([198, 18, 254, 2])))
    ip[10:12] = struct.pack("!H", internet_checksum(bytes(ip)))
    assert checksums_ok(bytes(ip) + udp_header)
    bad_udp = bytes(ip) + struct.pack("!HHHH", 53, 5353, 12, 0x1234) + b"dns!"
    assert not checksums_ok(bad_udp)
