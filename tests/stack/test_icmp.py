"""ICMP errors: RFC 1122 4.2.3.9 hard and soft errors, RFC 5927 validation, RFC 1191 PMTU."""

from __future__ import annotations

import errno

import pytest
import trio
from stack_helpers import A, B, payload

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.links.memory import MemoryLink
from tcpstack.tcp.events import IcmpReceived
from tcpstack.tcp.state import TcpState
from tcpstack.wire import build_icmp, parse_packet
from tcpstack.wire.segment import IcmpMessage, IcmpType, TcpFlags, TcpSegment

C = "198.18.0.3"  # a raw port standing in for the destination (or a router before it)
ROUTER = "198.18.0.254"


def _unreachable(code: int, about: TcpSegment, *, seq: int | None = None,
                 mtu: int | None = None) -> bytes:
    return build_icmp(IcmpMessage(
        src=ROUTER, dst=about.src, type=IcmpType.DEST_UNREACHABLE, code=code, next_hop_mtu=mtu,
        quoted_src=about.src, quoted_dst=about.dst, quoted_protocol=6,
        quoted_sport=about.sport, quoted_dport=about.dport,
        quoted_seq=about.seq if seq is None else seq,
    ))


async def _next_segment(raw: MemoryLink) -> TcpSegment:
    while True:
        for packet in await raw.receive_batch(1):
            seg = parse_packet(packet, verify_checksum=False)
            if isinstance(seg, TcpSegment):
                return seg


@pytest.mark.parametrize("code", [2, 3])
async def test_port_or_protocol_unreachable_refuses_connect(
    autojump_clock: trio.abc.Clock, code: int
) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, raw = net.attach(A), net.attach(C)
        async with open_stack(link_a, seed=1) as sa:
            async def answer() -> None:
                syn = await _next_segment(raw)
                assert syn.flags == TcpFlags.SYN
                raw.send_batch([_unreachable(code, syn)])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                started = trio.current_time()
                with pytest.raises(ConnectionRefusedError, match="refused"):
                    await sa.open_tcp_stream(C, 80)
            assert trio.current_time() - started < 0.5  # a hard error: no SYN retry
            assert sa.connections() == []


@pytest.mark.parametrize(("code", "err"), [(0, errno.ENETUNREACH), (1, errno.EHOSTUNREACH)])
async def test_net_or_host_unreachable_is_soft_until_syn_retries_run_out(
    autojump_clock: trio.abc.Clock, code: int, err: int
) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, raw = net.attach(A), net.attach(C)
        async with open_stack(link_a, seed=1) as sa:
            syns = 0

            async def answer() -> None:
                nonlocal syns
                while True:
                    syn = await _next_segment(raw)
                    syns += 1
                    raw.send_batch([_unreachable(code, syn)])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                with pytest.raises(OSError) as info:
                    await sa.open_tcp_stream(C, 80, syn_retries=3)
                nursery.cancel_scope.cancel()
            assert syns == 4  # the first SYN and all three retries went out
            assert info.value.errno == err
            assert "ICMP type 3 code" in str(info.value) and ROUTER in str(info.value)
            assert sa.stats.icmp_in == 4


async def test_out_of_window_quote_is_ignored(autojump_clock: trio.abc.Clock) -> None:
    """RFC 5927 4.1: a quoted sequence number outside snd_una..snd_nxt may be a blind attack."""
    async with MemoryNetwork(seed=1) as net:
        link_a, raw = net.attach(A), net.attach(C)
        async with open_stack(link_a, seed=1) as sa:
            async def answer() -> None:
                syn = await _next_segment(raw)
                raw.send_batch([_unreachable(3, syn, seq=(syn.seq + 100_000) & 0xFFFFFFFF)])
                await trio.sleep(0.1)
                assert sa.stats.icmp_out_of_window == 1
                assert [row.state for row in sa.connections()] == [TcpState.SYN_SENT]
                raw.send_batch([_unreachable(3, syn)])

            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer)
                with pytest.raises(ConnectionRefusedError):
                    await sa.open_tcp_stream(C, 80)


async def test_icmp_about_unknown_connection_is_counted_and_ignored(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, raw = net.attach(A), net.attach(C)
        async with open_stack(link_a, seed=1) as sa:
            bogus = TcpSegment(src=A, dst=C, sport=1234, dport=80, seq=1, flags=TcpFlags.ACK)
            raw.send_batch([_unreachable(3, bogus)])
            await trio.sleep(0.01)
            assert sa.stats.icmp_in == 1 and sa.stats.icmp_ignored == 1


async def test_fragmentation_needed_lowers_mss_and_transfer_stays_intact(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with MemoryNetwork(seed=1) as net:
        cfg = ImpairmentConfig(delay=0.01)  # so that data is still in flight when ICMP comes
        link_a, link_b = net.attach(A, impairment=cfg), net.attach(B, impairment=cfg)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(80)
            client = await sa.open_tcp_stream(B, 80)
            server = await listener.accept()
            assert client.info().snd_mss == 1448
            data = payload(200_000, 7)
            await client.send_all(data[:20_000])
            conn = client.conn
            in_flight = TcpSegment(src=A, dst=B, sport=client.local[1], dport=80,
                                   seq=conn.snd_una & 0xFFFFFFFF, flags=TcpFlags.ACK)
            link_b.send_batch([_unreachable(4, in_flight, mtu=1000)])
            await trio.sleep(0.011)
            info = client.info()
            assert info.pmtu == 1000
            assert info.snd_mss == 1000 - 40 - 12
            # Also a soft error would not be recorded for fragmentation-needed.
            assert sa.connection_error(conn) is None
            got = bytearray()

            async def rx() -> None:
                while len(got) < len(data):
                    got.extend(await server.receive_some())

            async with trio.open_nursery() as nursery:
                nursery.start_soon(rx)
                await client.send_all(data[20_000:])
            assert bytes(got) == data
            await client.aclose()
            await server.aclose()
            events = []
            with trio.move_on_after(1):
                async for ev in client.events():
                    if isinstance(ev, IcmpReceived):
                        events.append(ev)
            assert [(ev.type, ev.code, ev.next_hop_mtu) for ev in events] == [(3, 4, 1000)]


async def test_soft_error_keeps_established_connection_and_is_an_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(80)
            client = await sa.open_tcp_stream(B, 80)
            server = await listener.accept()
            seen: list[IcmpReceived] = []

            async def watch() -> None:
                async for ev in client.events():
                    if isinstance(ev, IcmpReceived):
                        seen.append(ev)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                about = TcpSegment(src=A, dst=B, sport=client.local[1], dport=80,
                                   seq=client.conn.snd_nxt & 0xFFFFFFFF, flags=TcpFlags.ACK)
                for code in (1, 3):  # host unreachable, even port unreachable: soft here
                    link_b.send_batch([_unreachable(code, about)])
                await trio.sleep(0.01)
                assert client.conn.state is TcpState.ESTABLISHED
                await client.send_all(b"still here")
                assert await server.receive_some() == b"still here"
                await client.aclose()
                await server.aclose()
            assert [(ev.type, ev.code) for ev in seen] == [(3, 1), (3, 3)]
