"""An exception on a connection's output path (engine poll or packet build) is a bug, never a
reason to stop the stack: that one connection is aborted with "internal error", the others go on."""

from __future__ import annotations

from typing import Any

import pytest
import trio

import tcpstack.stack as stack_mod
from tcpstack import open_stack
from tcpstack.links import MemoryNetwork
from tcpstack.tcp import Connection
from tcpstack.wire.segment import TcpSegment

A = "198.18.0.1"
B = "198.18.0.2"
POISON = b"poison"


async def _two_pairs(sa: Any, sb: Any) -> tuple[Any, Any, Any, Any]:
    listener = await sb.open_tcp_listener(7)
    c1 = await sa.open_tcp_stream(B, 7)
    s1 = await listener.accept()
    c2 = await sa.open_tcp_stream(B, 7)
    s2 = await listener.accept()
    return c1, s1, c2, s2


async def _check_survivor(c2: Any, s2: Any) -> None:
    await c2.send_all(b"still alive")
    assert await s2.receive_some(100) == b"still alive"
    await s2.send_all(b"and back")
    assert await c2.receive_some(100) == b"and back"


@pytest.mark.parametrize("accounting", [False, True])
async def test_engine_exception_on_output_aborts_only_that_connection(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch, accounting: bool
) -> None:
    real_poll = Connection.poll_transmit
    doomed: set[int] = set()

    def flaky(self: Connection, now: float) -> list[TcpSegment]:
        if self.conn_id in doomed:
            doomed.discard(self.conn_id)  # one failure: the abort's RST can still go out
            raise RuntimeError("simulated engine bug")
        return real_poll(self, now)

    monkeypatch.setattr(Connection, "poll_transmit", flaky)
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1, accounting=accounting) as sa, \
                open_stack(link_b, seed=2) as sb:
            c1, s1, c2, s2 = await _two_pairs(sa, sb)
            doomed.add(c1.conn.conn_id)
            with pytest.raises(trio.BrokenResourceError, match="internal error"):
                await c1.send_all(b"x" * 1000)
                await c1.send_all(b"more")  # the abort may land just after the first write
            assert sa.stats.internal_errors == 1
            assert c1.conn not in sa._conns.values()  # forgotten by the stack
            # The RST from the abort reached the peer.
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await s1.receive_some(100)
            await _check_survivor(c2, s2)
            assert sb.stats.internal_errors == 0
            for s in (c1, s1, c2, s2):
                await s.aclose()


async def test_packet_build_failure_aborts_only_that_connection(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_build = stack_mod.build_packet

    def flaky(seg: TcpSegment, **kwargs: Any) -> bytes:
        if seg.payload == POISON:
            raise ValueError("simulated codec bug")
        return real_build(seg, **kwargs)

    monkeypatch.setattr(stack_mod, "build_packet", flaky)
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            c1, s1, c2, s2 = await _two_pairs(sa, sb)
            with pytest.raises(trio.BrokenResourceError, match="internal error"):
                await c1.send_all(POISON)
                await c1.send_all(b"more")  # the abort may land just after the first write
            assert sa.stats.internal_errors == 1
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await s1.receive_some(100)
            await _check_survivor(c2, s2)
            for s in (c1, s1, c2, s2):
                await s.aclose()
