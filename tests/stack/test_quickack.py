"""``quickack``: a receiver that ACKs every in-order segment at once gives its peer RTT samples
without delayed-ACK time (what the overlay's latency metric relies on)."""

from __future__ import annotations

import trio

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork

A, B = "198.18.11.1", "198.18.11.2"


async def _sender_srtt(*, quickack: bool) -> float:
    """Sparse small writes (one segment each 100 ms) over a 20 ms RTT path; the sender's srtt."""
    path = ImpairmentConfig(delay=0.010)
    async with MemoryNetwork(seed=1) as net:
        a, b = net.attach(A, impairment=path), net.attach(B, impairment=path)
        async with open_stack(a, seed=1, nodelay=True) as sa, open_stack(b, seed=2) as sb:
            listener = await sb.open_tcp_listener(7000, quickack=quickack)
            client = await sa.open_tcp_stream(B, 7000)
            server = await listener.accept()
            for _ in range(40):
                await client.send_all(b"m" * 200)
                await server.receive_some()
                await trio.sleep(0.1)
            srtt = client.info().rtt / 1e6
            await client.aclose()
            await server.aclose()
            await listener.aclose()
    return srtt


async def test_quickack_removes_delayed_ack_time_from_the_peers_rtt(
    autojump_clock: trio.abc.Clock,
) -> None:
    delayed = await _sender_srtt(quickack=False)
    quick = await _sender_srtt(quickack=True)
    assert delayed > 0.040  # 20 ms path + the receiver's delayed-ACK timer (40 ms minimum)
    assert 0.019 <= quick < 0.025  # the path alone


async def test_quickack_is_settable_on_a_live_stream(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A), seed=1) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(7001)
            client = await sa.open_tcp_stream(B, 7001)
            server = await listener.accept()
            server.options.update(quickack=True)
            assert server.conn.rcv.quickack and server.options._get().quickack
            await client.aclose()
            await server.aclose()
            await listener.aclose()
