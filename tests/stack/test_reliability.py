"""Reliability in process: two stacks on a MemoryNetwork, virtual time, seeded impairments.

Each case moves 10 MB in each direction at once and checks the SHA-256 of both arrivals, then
that both ends close cleanly (every connection in TIME-WAIT or CLOSED, no error, no RST sent).
"""

from __future__ import annotations

import time

import pytest
import trio
from stack_helpers import (
    A,
    B,
    all_tasks,
    exchange,
    payload,
    sha,
    wait_all_closed_cleanly,
)

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.stack import StackCore
from tcpstack.tcp import Connection
from tcpstack.tcp.events import ResetSent
from tcpstack.tcp.state import TcpState
from tcpstack.wire.segment import TcpSegment

SIZE = 10_000_000
DELAY = 0.01  # one way: a 20 ms RTT
BDP = 125_000  # bytes: 10 Mbit/s * 100 ms

# name -> impairment of each direction
CASES: dict[str, ImpairmentConfig | None] = {
    "clean": None,
    "loss-1%": ImpairmentConfig(delay=DELAY, loss=0.01),
    "loss-5%": ImpairmentConfig(delay=DELAY, loss=0.05),
    "loss-10%": ImpairmentConfig(delay=DELAY, loss=0.10),
    "loss-20%": ImpairmentConfig(delay=DELAY, loss=0.20),
    # Bursts: mean good run 100 packets, mean bad run 4 packets losing half of them.
    "gilbert-elliott": ImpairmentConfig(
        delay=DELAY, p_good_to_bad=0.01, p_bad_to_good=0.25, loss_in_bad=0.5
    ),
    "reorder-5%": ImpairmentConfig(delay=DELAY, reorder=0.05),
    "duplicate-2%": ImpairmentConfig(delay=DELAY, duplicate=0.02),
    "corrupt-1%": ImpairmentConfig(delay=DELAY, corrupt=0.01),
    # 10 Mbit/s, 100 ms RTT, a drop-tail queue of one BDP (10e6 * 0.1 / 8 bytes).
    "bottleneck": ImpairmentConfig(delay=0.05, rate=10e6, queue_bytes=BDP),
}
# Buffers of a few BDPs, so that cwnd (not the 16 KiB default send buffer) meets the bottleneck.
OPTIONS: dict[str, dict[str, int]] = {
    "bottleneck": {"send_buffer": 8 * BDP, "receive_buffer": 8 * BDP},
}

# Wall-clock seconds per case on a 2-core CI machine, printed with -s for the lead's records.
TIMINGS: dict[str, float] = {}


@pytest.mark.parametrize("name", list(CASES))
async def test_bidirectional_10mb(
    autojump_clock: trio.abc.Clock, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = CASES[name]
    # A segment held back by the network can reach a stack after its connection has closed; RFC
    # 9293 3.10.7.1 answers it with a RST from the closed port. Record every such RST and the
    # state, at that moment, of the connection the segment was for.
    strays: list[tuple[TcpSegment, TcpState | None]] = []
    engines: dict[tuple[str, int, str, int], Connection] = {}
    real_reset = StackCore._reset_closed

    def reset_closed(self: StackCore, seg: TcpSegment) -> None:
        conn = engines.get((seg.dst, seg.dport, seg.src, seg.sport))
        strays.append((seg, None if conn is None else conn.state))
        real_reset(self, seg)

    monkeypatch.setattr(StackCore, "_reset_closed", reset_closed)
    up, down = payload(SIZE, 1), payload(SIZE, 2)
    started = time.perf_counter()
    async with MemoryNetwork(seed=sum(map(ord, name))) as net:
        link_a = net.attach(A, impairment=cfg)
        link_b = net.attach(B, impairment=cfg)
        opts = OPTIONS.get(name, {})
        async with (
            open_stack(link_a, seed=1, **opts) as sa,
            open_stack(link_b, seed=2, **opts) as sb,
        ):
            with trio.fail_after(3600):
                begin = trio.current_time()
                client, server = await exchange(sa, sb, up, down, engines=engines)
                elapsed = trio.current_time() - begin
            assert sha(server.received) == sha(up)
            assert sha(client.received) == sha(down)
            await wait_all_closed_cleanly(sa, sb)
            for side in (client, server):
                assert side.stream is not None
                conn = side.stream.conn
                assert conn.error is None
                # The engine too may answer a stray that reaches it after it closed (in the same
                # receive batch as the segment that closed it): that RST is RFC 9293 3.10.7.1.
                resets = [ev for ev in conn.drain_events() if isinstance(ev, ResetSent)]
                assert all(ev.reason == "closed" for ev in resets), resets
                if name != "reorder-5%":
                    assert resets == []
            # No RST but to late strays for connections that had already closed cleanly.
            assert sa.stats.resets_sent + sb.stats.resets_sent == len(strays)
            assert all(state is TcpState.CLOSED for _, state in strays), strays
            if name != "reorder-5%":
                assert strays == []  # only held-back segments can arrive that late
            if name == "corrupt-1%":
                # Corruption reaches both ends; the checksum catches it and the packet is dropped.
                assert not link_a.checksum_offload
                assert sa.stats.checksum_errors > 0 and sb.stats.checksum_errors > 0
            if name.startswith("loss") or name == "gilbert-elliott":
                assert client.stream is not None and client.stream.info().total_retrans > 0
            if name == "bottleneck":
                # Congestion control filled the one-BDP queue (drops) and still kept each
                # direction above half the rate, with ACKs sharing the queues with data.
                for link in (link_a, link_b):
                    assert link.egress_stats is not None and link.egress_stats.dropped_queue > 0
                assert SIZE * 8 / elapsed > 5e6
    TIMINGS[name] = time.perf_counter() - started
    print(f"\n{name}: {TIMINGS[name]:.1f} s wall, {elapsed:.1f} s virtual")


async def test_thousand_concurrent_connections(autojump_clock: trio.abc.Clock) -> None:
    """1000 connections at once, each moving 64 KiB client -> server; the server answers with
    the SHA-256 of what it got, and every answer must match."""
    n, size = 1000, 65536
    digests: dict[int, str] = {}
    mismatches: list[int] = []
    async with MemoryNetwork(seed=3) as net:
        link_a = net.attach(A, impairment=ImpairmentConfig(delay=0.005))
        link_b = net.attach(B, impairment=ImpairmentConfig(delay=0.005))
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(7000, backlog=n)

            async def serve_one(stream: trio.abc.Stream) -> None:
                got = bytearray()
                while block := await stream.receive_some(65536):
                    got.extend(block)
                await stream.send_all(sha(got).encode())
                await stream.aclose()

            async def server(nursery: trio.Nursery) -> None:
                for _ in range(n):
                    stream = await listener.accept()
                    nursery.start_soon(serve_one, stream)

            async def client(i: int) -> None:
                data = payload(size, 1000 + i)
                stream = await sa.open_tcp_stream(B, 7000)
                await stream.send_all(data)
                await stream.send_eof()
                answer = bytearray()
                while block := await stream.receive_some(100):
                    answer.extend(block)
                await stream.aclose()
                digests[i] = answer.decode()
                if answer.decode() != sha(data):
                    mismatches.append(i)

            with trio.fail_after(600):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(server, nursery)
                    for i in range(n):
                        nursery.start_soon(client, i)
            await listener.aclose()
            assert len(digests) == n
            assert mismatches == []
            assert sb.stats.syn_queue_overflows == 0 and sb.stats.accept_queue_overflows == 0


async def test_peer_vanishes_user_timeout(autojump_clock: trio.abc.Clock) -> None:
    """B's link goes down for good mid-transfer; A's user timeout (RFC 5482) ends the stream
    with a clear error, the connection is gone and no task is left behind."""
    baseline = all_tasks()
    async with MemoryNetwork(seed=5) as net:
        link_a = net.attach(A, impairment=ImpairmentConfig(delay=DELAY))
        link_b = net.attach(B, impairment=ImpairmentConfig(delay=DELAY))
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(5001)
            client = await sa.open_tcp_stream(B, 5001, user_timeout=20.0)
            server = await listener.accept()
            received = 0

            async def drain() -> None:
                nonlocal received
                while True:
                    block = await server.receive_some(65536)
                    received += len(block)
                    if received >= 1_000_000:
                        link_b.set_down(True)  # for good
                    if not block:
                        return

            vanished_at: float | None = None
            with trio.fail_after(300):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(drain)
                    with pytest.raises(trio.BrokenResourceError, match="user timeout"):
                        await client.send_all(payload(SIZE, 3))
                    vanished_at = trio.current_time()
                    nursery.cancel_scope.cancel()
            assert link_b.down and received >= 1_000_000
            assert vanished_at is not None
            info = client.info()
            assert info.state == 7  # TCP_CLOSE in Linux's numbering
            assert sa.connections() == []
            # The error sticks: later calls say the same, not something vaguer.
            with pytest.raises(trio.BrokenResourceError, match="user timeout"):
                await client.receive_some(10)
            await client.aclose()
            await server.aclose()
            await listener.aclose()
    # Stacks and network closed: nothing they started is still running.
    assert all_tasks() == baseline
