"""TSO/GSO end to end: two stacks on a MemoryNetwork whose ports carry super-segments whole
(veth + GRO), and the links' ``gso_max_size`` contract (default, middleware, impairment)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
import trio
from stack_helpers import exchange, payload, sha

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.links.impairment import Impairment
from tcpstack.links.pcap_tap import PcapTap
from tcpstack.tcp.connection import Connection

A = "198.18.0.1"
B = "198.18.0.2"
SIZE = 2_000_000


def ipv4(src: str, dst: str, body: bytes) -> bytes:
    """An IPv4 packet of protocol 253 (experimentation): the memory link looks no further."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0, 64, 253, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + body


async def _run(gso: int, tso: bool) -> tuple[int, dict[tuple[str, int, str, int], Connection]]:
    up, down = payload(SIZE, 1), payload(SIZE // 4, 2)
    engines: dict[tuple[str, int, str, int], Connection] = {}
    async with MemoryNetwork(seed=1) as net:
        link_a = net.attach(A, gso_max_size=gso)
        link_b = net.attach(B, gso_max_size=gso)
        async with (
            open_stack(link_a, seed=1, tso=tso, send_buffer=1 << 20, receive_buffer=1 << 20) as sa,
            open_stack(link_b, seed=2, tso=tso, send_buffer=1 << 20, receive_buffer=1 << 20) as sb,
        ):
            client, server = await exchange(sa, sb, up, down, engines=engines)
        assert sha(server.received) == sha(up)
        assert sha(client.received) == sha(down)
        return link_a.stats.packets_sent, engines


async def test_tso_moves_the_same_bytes_in_far_fewer_link_packets(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(120):
        packets_tso, engines = await _run(65535, True)
        packets_plain, plain = await _run(65535, False)
    client = next(c for key, c in engines.items() if key[0] == A)
    server = next(c for key, c in engines.items() if key[0] == B)
    mss = client.mss_cache
    # The sender's counters count MSS pieces (Linux gso_segs), the link saw super-segments.
    assert client.data_segs_out >= SIZE // mss
    assert packets_tso * 5 < packets_plain
    assert packets_tso < client.segs_out // 5
    # The receiver counted the coalesced segments as their pieces.
    assert server.rcv.data_segs_in >= SIZE // mss
    assert server.segs_in >= SIZE // mss
    plain_client = next(c for key, c in plain.items() if key[0] == A)
    assert plain_client.data_segs_out >= SIZE // mss


async def test_stack_gives_connections_the_links_gso_size(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a = net.attach(A, gso_max_size=40000)
        link_b = net.attach(B)
        async with open_stack(link_a) as sa, open_stack(link_b) as sb:
            listener = await sb.open_tcp_listener(80)
            stream = await sa.open_tcp_stream(B, 80)
            accepted = await listener.accept()
            assert stream.conn.gso_max_size == 40000
            assert accepted.conn.gso_max_size == 0
            # A connection whose MTU is not the link's would get pieces cut at the link's MTU,
            # larger than its MSS: no offload for it.
            small = await sa.open_tcp_stream(B, 80, mtu=1400)
            assert small.conn.gso_max_size == 0
            await (await listener.accept()).aclose()
            for s in (stream, accepted, small):
                await s.aclose()


async def test_memory_link_accepts_super_segments_only_up_to_its_gso_size() -> None:
    async with MemoryNetwork(seed=1) as net:
        a = net.attach(A, gso_max_size=30000)
        b = net.attach(B, gso_max_size=30000)
        plain = net.attach("198.18.0.3")
        assert (a.gso_max_size, plain.gso_max_size) == (30000, 0)
        a.send_batch([ipv4(A, B, bytes(20000)), ipv4(A, B, bytes(40000))])
        assert [len(p) for p in await b.receive_batch()] == [20020]
        assert net.stats.oversize == 1
        # A port without offload neither sends nor receives packets above its MTU.
        plain.send_batch([ipv4("198.18.0.3", B, bytes(20000))])
        a.send_batch([ipv4(A, "198.18.0.3", bytes(20000))])
        assert net.stats.oversize == 3
        with pytest.raises(ValueError, match="gso_max_size"):
            net.attach("198.18.0.4", gso_max_size=70000)


async def test_middleware_forwards_gso_size_and_impairment_turns_it_off(tmp_path: Path) -> None:
    async with MemoryNetwork(seed=1) as net:
        link = net.attach(A, gso_max_size=65535)
        assert PcapTap(link, tmp_path / "tap.pcap").gso_max_size == 65535
        # Per-packet loss cannot act on a 45-packet super-segment as on 45 packets.
        assert Impairment(link, tx=ImpairmentConfig(loss=0.1)).gso_max_size == 0
