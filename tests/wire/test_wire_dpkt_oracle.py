"""dpkt as the oracle: our bytes decoded by dpkt, and dpkt's bytes decoded by us.

dpkt recomputes a checksum when the field is zero and the packet is serialised, so both the IPv4
header and the TCP/ICMP checksums we emit are checked against an independent implementation.
"""

from __future__ import annotations

import socket
import struct

import dpkt
from hypothesis import given, settings
from hypothesis import strategies as st
from wire_strategies import addresses, icmp_messages, tcp_segments, u8, u16, u32, unknown_kinds

from tcpstack.wire import (
    IcmpMessage,
    SackBlock,
    TcpFlags,
    TcpOptions,
    TcpSegment,
    Timestamps,
    build_icmp,
    build_packet,
    parse_packet,
)

EXAMPLES = 1500


def dpkt_checksums(ip: dpkt.ip.IP) -> tuple[int, int]:
    """The IP and transport checksums dpkt computes for the same packet."""
    ip.sum = 0
    ip.data.sum = 0
    recomputed = dpkt.ip.IP(bytes(ip))
    return recomputed.sum, recomputed.data.sum


def expected_from_dpkt_options(raw: bytes) -> dict[str, object]:
    """Option values from dpkt's tokenisation, first occurrence wins, up to EOL."""
    values: dict[str, object] = {"mss": None, "wscale": None, "sack_permitted": False,
                                 "sack_blocks": (), "timestamps": None, "unknown": []}
    layout = []
    seen = set()
    for kind, data in dpkt.tcp.parse_opts(raw):
        layout.append(kind)
        if kind == dpkt.tcp.TCP_OPT_EOL:
            break
        if kind == dpkt.tcp.TCP_OPT_NOP:
            continue
        if kind in seen or kind not in (2, 3, 4, 5, 8):
            values["unknown"].append((kind, data))  # type: ignore[attr-defined]
        elif kind == dpkt.tcp.TCP_OPT_MSS:
            values["mss"] = struct.unpack("!H", data)[0]
        elif kind == dpkt.tcp.TCP_OPT_WSCALE:
            values["wscale"] = data[0]
        elif kind == dpkt.tcp.TCP_OPT_SACKOK:
            values["sack_permitted"] = True
        elif kind == dpkt.tcp.TCP_OPT_TIMESTAMP:
            values["timestamps"] = Timestamps(*struct.unpack("!II", data))
        else:
            values["sack_blocks"] = tuple(SackBlock(*pair) for pair in struct.iter_unpack("!II", data))
        seen.add(kind)
    values["layout"] = tuple(layout)
    return values


@settings(max_examples=EXAMPLES)
@given(tcp_segments())
def test_built_tcp_packets_decode_identically_in_dpkt(segment: TcpSegment) -> None:
    packet = build_packet(segment)
    ip = dpkt.ip.IP(packet)
    assert (ip.v, ip.hl, ip.p, ip.len) == (4, 5, 6, len(packet))
    assert (ip.tos, ip.id, ip.ttl, bool(ip.df), ip.mf, ip.offset) == (
        segment.tos, segment.ip_id, segment.ttl, segment.df, 0, 0)
    assert socket.inet_ntoa(ip.src) == segment.src and socket.inet_ntoa(ip.dst) == segment.dst
    tcp = ip.data
    assert isinstance(tcp, dpkt.tcp.TCP)
    assert (tcp.sport, tcp.dport, tcp.seq, tcp.ack, tcp.flags, tcp.win, tcp.urp) == (
        segment.sport, segment.dport, segment.seq, segment.ack, segment.flags, segment.window,
        segment.urgent)
    assert bytes(tcp.data) == segment.payload
    assert tcp.off * 4 == 20 + len(tcp.opts)
    expected = expected_from_dpkt_options(bytes(tcp.opts))
    options = segment.options
    assert expected["mss"] == options.mss
    assert expected["wscale"] == options.wscale
    assert expected["sack_permitted"] == options.sack_permitted
    assert expected["sack_blocks"] == options.sack_blocks
    assert expected["timestamps"] == options.timestamps
    assert tuple(expected["unknown"]) == options.unknown  # type: ignore[arg-type]
    if options.layout is not None:
        layout = expected["layout"]
        assert layout == options.layout or layout == options.layout + (0,)
    our_ip_sum, our_tcp_sum = ip.sum, tcp.sum
    assert dpkt_checksums(ip) == (our_ip_sum, our_tcp_sum)


@st.composite
def dpkt_tcp_packets(draw: st.DrawFn) -> tuple[bytes, TcpSegment]:
    """A packet serialised by dpkt from random fields and hand-written options, and the
    segment it must decode to."""
    items = draw(st.lists(st.one_of(
        st.just(("nop",)), st.tuples(st.just("mss"), u16), st.tuples(st.just("ws"), u8),
        st.just(("sackok",)), st.tuples(st.just("ts"), u32, u32),
        st.tuples(st.just("sack"), st.lists(st.tuples(u32, u32), min_size=1, max_size=3)),
        st.tuples(st.just("unknown"), unknown_kinds, st.binary(max_size=8)),
    ), max_size=6))
    raw = b""
    for item in items:
        name = item[0]
        if name == "nop":
            raw += b"\x01"
        elif name == "mss":
            raw += struct.pack("!BBH", 2, 4, item[1])
        elif name == "ws":
            raw += struct.pack("!BBB", 3, 3, item[1])
        elif name == "sackok":
            raw += b"\x04\x02"
        elif name == "ts":
            raw += struct.pack("!BBII", 8, 10, item[1], item[2])
        elif name == "sack":
            raw += bytes((5, 2 + 8 * len(item[1]))) + b"".join(
                struct.pack("!II", *pair) for pair in item[1])
        else:
            raw += bytes((item[1], 2 + len(item[2]))) + item[2]
    if len(raw) > 40:
        raw = b""
    raw += bytes(-len(raw) % 4)  # EOL and zero padding
    expected_options = expected_from_dpkt_options(raw)
    payload = draw(st.binary(max_size=1460))
    tcp = dpkt.tcp.TCP(sport=draw(u16), dport=draw(u16), seq=draw(u32), ack=draw(u32),
                       flags=draw(u8), win=draw(u16), urp=draw(u16), opts=raw, data=payload)
    tcp.off = (20 + len(raw)) // 4
    df = draw(st.booleans())
    ip = dpkt.ip.IP(src=socket.inet_aton(draw(addresses)), dst=socket.inet_aton(draw(addresses)),
                    p=6, ttl=draw(u8), tos=draw(u8), id=draw(u16), data=tcp)
    ip.df = int(df)
    ip.len = 20 + len(tcp)
    packet = bytes(ip)
    segment = TcpSegment(
        src=socket.inet_ntoa(ip.src), dst=socket.inet_ntoa(ip.dst), sport=tcp.sport,
        dport=tcp.dport, seq=tcp.seq, ack=tcp.ack, flags=TcpFlags(tcp.flags), window=tcp.win,
        urgent=tcp.urp, options=TcpOptions(**expected_options) if raw else TcpOptions(),  # type: ignore[arg-type]
        payload=payload, ttl=ip.ttl, tos=ip.tos, ip_id=ip.id, df=df,
    )
    return packet, segment


@settings(max_examples=EXAMPLES)
@given(dpkt_tcp_packets())
def test_dpkt_built_tcp_packets_parse_identically(case: tuple[bytes, TcpSegment]) -> None:
    packet, expected = case
    parsed = parse_packet(packet)  # dpkt's checksums verify
    assert isinstance(parsed, TcpSegment)
    for name in TcpSegment.__slots__[:-1]:
        assert getattr(parsed, name) == getattr(expected, name), name
    assert parsed.options.layout == (expected.options.layout or None)
    assert build_packet(parsed) == packet  # and it round-trips byte for byte


@settings(max_examples=EXAMPLES // 3)
@given(icmp_messages())
def test_built_icmp_decodes_identically_in_dpkt(msg: IcmpMessage) -> None:
    packet = build_icmp(msg)
    ip = dpkt.ip.IP(packet)
    assert (ip.p, ip.ttl, ip.tos, ip.id, ip.len) == (1, msg.ttl, msg.tos, msg.ip_id, len(packet))
    assert socket.inet_ntoa(ip.src) == msg.src and socket.inet_ntoa(ip.dst) == msg.dst
    icmp = ip.data
    assert isinstance(icmp, dpkt.icmp.ICMP)
    assert (icmp.type, icmp.code) == (msg.type, msg.code)
    raw = bytes(icmp)
    if msg.type in (0, 8):
        assert (icmp.data.id, icmp.data.seq, bytes(icmp.data.data)) == (
            msg.ident, msg.sequence, msg.quoted)
    elif msg.type == 3 and msg.code == 4:
        assert icmp.data.mtu == msg.next_hop_mtu
    if msg.quoted or msg.type not in (3, 4, 11):
        assert raw[8:] == msg.quoted
    else:  # synthesised quote: dpkt must read the offending packet's fields back
        quoted_ip = dpkt.ip.IP(raw[8:])
        assert socket.inet_ntoa(quoted_ip.src) == msg.quoted_src
        assert socket.inet_ntoa(quoted_ip.dst) == msg.quoted_dst
        assert struct.unpack_from("!HHI", raw, 28) == (
            msg.quoted_sport, msg.quoted_dport, msg.quoted_seq)
    our = (ip.sum, icmp.sum)
    ip.sum = 0
    icmp.sum = 0
    recomputed = dpkt.ip.IP(bytes(ip))
    assert (recomputed.sum, recomputed.data.sum) == our


@st.composite
def dpkt_icmp_packets(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    kind = draw(st.sampled_from(["echo", "unreach", "other"]))
    if kind == "echo":
        icmp_type, code = draw(st.sampled_from([0, 8])), 0
        ident, seq, data = draw(u16), draw(u16), draw(st.binary(max_size=64))
        icmp = dpkt.icmp.ICMP(type=icmp_type, code=code,
                              data=dpkt.icmp.ICMP.Echo(id=ident, seq=seq, data=data))
        expected: dict[str, object] = {"ident": ident, "sequence": seq, "quoted": data}
    elif kind == "unreach":
        icmp_type, code, mtu = 3, draw(st.integers(0, 15)), draw(u16)
        tcp = dpkt.tcp.TCP(sport=draw(u16), dport=draw(u16), seq=draw(u32))
        inner = dpkt.ip.IP(src=socket.inet_aton(draw(addresses)),
                           dst=socket.inet_aton(draw(addresses)), p=6, data=tcp)
        quote = bytes(inner)[:28]
        icmp = dpkt.icmp.ICMP(type=icmp_type, code=code,
                              data=dpkt.icmp.ICMP.Unreach(mtu=mtu, data=quote))
        expected = {"next_hop_mtu": mtu if code == 4 else None, "quoted": quote,
                    "quoted_src": socket.inet_ntoa(inner.src),
                    "quoted_dst": socket.inet_ntoa(inner.dst), "quoted_protocol": 6,
                    "quoted_sport": tcp.sport, "quoted_dport": tcp.dport, "quoted_seq": tcp.seq}
    else:
        icmp_type, code = draw(st.sampled_from([5, 12, 13, 17])), draw(u8)
        body = draw(st.binary(min_size=4, max_size=40))
        icmp = dpkt.icmp.ICMP(type=icmp_type, code=code, data=body)
        expected = {"quoted": body[4:]}
    ip = dpkt.ip.IP(src=socket.inet_aton(draw(addresses)), dst=socket.inet_aton(draw(addresses)),
                    p=1, ttl=draw(u8), tos=draw(u8), id=draw(u16), data=icmp)
    ip.len = 20 + len(icmp)
    expected.update(src=socket.inet_ntoa(ip.src), dst=socket.inet_ntoa(ip.dst), type=icmp_type,
                    code=code, ttl=ip.ttl, tos=ip.tos, ip_id=ip.id)
    return bytes(ip), expected


@settings(max_examples=EXAMPLES // 3)
@given(dpkt_icmp_packets())
def test_dpkt_built_icmp_parses_identically(case: tuple[bytes, dict[str, object]]) -> None:
    packet, fields = case
    parsed = parse_packet(packet)
    assert parsed == IcmpMessage(**fields)  # type: ignore[arg-type]
