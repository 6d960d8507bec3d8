"""Two stacks on a MemoryNetwork in virtual time: handshake, transfer, close, resets, listeners."""

from __future__ import annotations

import pytest
import trio
from stack_helpers import exchange, payload, sha

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.tcp.state import TcpState

A = "198.18.0.1"
B = "198.18.0.2"


async def _transfer(
    net: MemoryNetwork, size: int, *, a_cfg: ImpairmentConfig | None = None,
    b_cfg: ImpairmentConfig | None = None,
) -> None:
    """Client on A sends ``size`` bytes while B sends ``size`` bytes back; both arrive intact."""
    up, down = payload(size, 1), payload(size, 2)
    link_a = net.attach(A, impairment=a_cfg)
    link_b = net.attach(B, impairment=b_cfg)
    async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
        client, server = await exchange(sa, sb, up, down)
    assert sha(server.received) == sha(up)
    assert sha(client.received) == sha(down)


async def test_bidirectional_transfer_clean_network(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        with trio.fail_after(60):
            await _transfer(net, 300_000)


@pytest.mark.parametrize("loss", [0.01, 0.05])
async def test_bidirectional_transfer_with_loss_and_delay(
    autojump_clock: trio.abc.Clock, loss: float
) -> None:
    cfg = ImpairmentConfig(delay=0.01, loss=loss)
    async with MemoryNetwork(seed=7) as net:
        with trio.fail_after(300):
            await _transfer(net, 200_000, a_cfg=cfg, b_cfg=cfg)
        # SACK blocks ride on data segments here; they must shrink the payload, not the MTU.
        assert net.stats.oversize == 0


async def test_connect_to_closed_port_is_refused(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            with pytest.raises(OSError, match="refused|reset"):
                await sa.open_tcp_stream(B, 9)
            assert sb.stats.resets_sent == 1
            assert sb.stats.no_connection == 1


async def test_malformed_packets_are_counted_not_fatal(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_b, seed=2) as sb:
            # An IPv4 header addressed to B whose total length overruns the packet.
            bogus = bytes([0x45, 0, 0, 200]) + bytes(12) + bytes([198, 18, 0, 2])
            link_a.send_batch([bogus, b"\x45"])
            await trio.sleep(0.1)
            assert sb.stats.malformed >= 1
            listener = await sb.open_tcp_listener(80)  # the stack still works
            await listener.aclose()


async def test_connections_lists_state_and_info(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(7)
            client = await sa.open_tcp_stream(B, 7)
            server = await listener.accept()
            await client.send_all(b"hello")
            assert await server.receive_some(100) == b"hello"
            rows = sa.connections()
            assert len(rows) == 1
            row = rows[0]
            assert row.remote == (B, 7)
            assert row.state is TcpState.ESTABLISHED
            assert row.info.bytes_acked >= 5 or row.info.bytes_sent >= 5
            assert client.info().state == TcpState.ESTABLISHED.linux_code
            await client.aclose()
            await server.aclose()
            await listener.aclose()


async def test_a_packet_that_breaks_processing_does_not_stop_the_stack(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tcpstack.stack import StackCore

    calls = {"n": 0}
    real_dispatch = StackCore._dispatch

    def flaky(self: StackCore, seg: object, now: float) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated bug")
        real_dispatch(self, seg, now)  # type: ignore[arg-type]

    monkeypatch.setattr(StackCore, "_dispatch", flaky)
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_a, seed=1) as sa, open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(7)
            # The first SYN hits the simulated bug and is dropped; the SYN retransmission gets in.
            client = await sa.open_tcp_stream(B, 7)
            server = await listener.accept()
            await client.send_all(b"still alive")
            assert await server.receive_some(100) == b"still alive"
            assert sa.stats.internal_errors + sb.stats.internal_errors == 1
            await client.aclose()
            await server.aclose()
            await listener.aclose()


async def test_syn_fin_at_a_linux_listener_is_dropped_and_counted(
    autojump_clock: trio.abc.Clock,
) -> None:
    from tcpstack.wire import TcpFlags, TcpSegment, build_packet, parse_packet

    async with MemoryNetwork(seed=1) as net:
        raw, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_b, seed=2) as sb:
            listener = await sb.open_tcp_listener(80)
            synfin = TcpSegment(src=A, dst=B, sport=40000, dport=80, seq=1000,
                                flags=TcpFlags.SYN | TcpFlags.FIN, window=65535)
            raw.send_batch([build_packet(synfin)])
            await trio.sleep(1.0)
            assert sb.stats.synfin_dropped == 1
            assert sb.connections() == []
            # Nothing answered it: no SYN-ACK, no RST.
            with trio.move_on_after(0.5):
                answer = await raw.receive_batch()
                pytest.fail(f"the stack answered a SYN|FIN: {answer!r}")
            # A plain SYN is still served.
            syn = TcpSegment(src=A, dst=B, sport=40001, dport=80, seq=5000,
                             flags=TcpFlags.SYN, window=65535)
            raw.send_batch([build_packet(syn)])
            # Memory links guarantee integrity, so the stack leaves the checksum to them.
            reply = parse_packet((await raw.receive_batch())[0], verify_checksum=False)
            assert isinstance(reply, TcpSegment)
            assert reply.flags == TcpFlags.SYN | TcpFlags.ACK and reply.ack == 5001
            await listener.aclose()
