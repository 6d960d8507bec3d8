"""The application-facing API: stream options, events, errors, trio.serve_listeners."""

from __future__ import annotations

import errno
from functools import partial

import pytest
import trio
from stack_helpers import A, B, payload

from tcpstack import api, open_stack
from tcpstack.api import Stack, TCPListener, TCPStream
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.tcp.config import KeepaliveOptions
from tcpstack.tcp.events import KeepaliveTimeout, StateChanged
from tcpstack.tcp.state import TcpState


async def _pair(sa: Stack, sb: Stack, port: int = 80) -> tuple[TCPStream, TCPStream, TCPListener]:
    listener = await sb.open_tcp_listener(port)
    client = await sa.open_tcp_stream(B, port)
    server = await listener.accept()
    return client, server, listener


async def test_options_read_and_set(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            client, server, _ = await _pair(sa, sb)
            opts = client.options
            assert (opts.nodelay, opts.congestion, opts.user_timeout) == (False, "cubic", None)
            assert opts.send_buffer == 16384 and opts.receive_buffer == 131072
            assert opts.keepalive.enabled is False
            assert opts.mss == 1448

            opts.nodelay = True
            opts.congestion = "newreno"
            opts.user_timeout = 30
            opts.send_buffer = 4096
            opts.keepalive = True
            assert client.conn.opts.nodelay is True
            assert "reno" in type(client.conn.cc).__name__.lower()
            assert client.conn.opts.user_timeout == 30.0
            assert opts.keepalive.enabled and opts.keepalive.idle == 7200.0
            # The new send buffer bounds what the engine accepts.
            assert client.conn.send(b"x" * 10_000) <= 4096
            with pytest.raises(ValueError):
                opts.congestion = "no-such-algorithm"
            assert opts.congestion == "newreno"  # a bad value changes nothing
            with pytest.raises(ValueError):
                opts.send_buffer = 0
            assert opts.send_buffer == 4096
            opts.user_timeout = 0  # TCP_USER_TIMEOUT 0: back to the default
            assert opts.user_timeout is None
            await client.aclose()
            with pytest.raises(trio.ClosedResourceError):
                opts.nodelay = False
            await server.aclose()


async def test_keepalive_option_detects_dead_peer(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_b = net.attach(B)
        async with open_stack(net.attach(A)) as sa, open_stack(link_b) as sb:
            client, server, _ = await _pair(sa, sb)
            client.options.keepalive = KeepaliveOptions(enabled=True, idle=10, interval=2, count=3)
            started = trio.current_time()
            link_b.set_down(True)
            with pytest.raises(trio.BrokenResourceError, match="timed out") as info:
                await client.receive_some()
            assert isinstance(info.value.__cause__, TimeoutError)
            # idle 10 s, then three probes 2 s apart, then the abort at the next interval.
            assert 15.9 <= trio.current_time() - started <= 16.1
            events = []
            async for ev in client.events():
                events.append(ev)
            assert any(isinstance(ev, KeepaliveTimeout) for ev in events)


async def test_reset_by_peer_is_broken_resource(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            client, server, _ = await _pair(sa, sb)
            await client.send_all(b"unread")
            await trio.sleep(0.01)
            await server.aclose()  # unread data: RST (RFC 2525 2.17, as Linux)
            with pytest.raises(trio.BrokenResourceError, match="connection reset by peer") as info:
                await client.receive_some()
            assert isinstance(info.value.__cause__, ConnectionResetError)
            assert info.value.__cause__.errno == errno.ECONNRESET
            with pytest.raises(trio.BrokenResourceError, match="reset"):
                await client.send_all(b"more")


async def test_closed_stream_raises_closed_resource(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            client, server, _ = await _pair(sa, sb)
            await client.send_eof()
            with pytest.raises(trio.ClosedResourceError, match="send_eof"):
                await client.send_all(b"after eof")
            assert await server.receive_some() == b""  # the FIN
            await server.send_all(b"half-closed still receives")
            assert await client.receive_some() == b"half-closed still receives"
            await client.aclose()
            await client.aclose()  # idempotent
            for call in (client.send_all(b"x"), client.receive_some(), client.send_eof()):
                with pytest.raises(trio.ClosedResourceError):
                    await call
            await server.aclose()


async def test_concurrent_senders_are_busy(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            client, server, _ = await _pair(sa, sb)
            with pytest.raises(ExceptionGroup) as info:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.send_all, payload(1_000_000, 1))
                    nursery.start_soon(client.send_all, b"second")
            assert info.group_contains(trio.BusyResourceError)
            await server.aclose()


async def test_events_buffer_is_bounded_and_counts_drops(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api, "EVENT_BUFFER", 3)
    async with MemoryNetwork(seed=4) as net:
        cfg = ImpairmentConfig(delay=0.01, loss=0.05)
        async with (
            open_stack(net.attach(A, impairment=cfg), time_wait=0.5) as sa,
            open_stack(net.attach(B, impairment=cfg)) as sb,
        ):
            client, server, _ = await _pair(sa, sb)

            async def drain() -> None:
                while await server.receive_some():
                    pass
                await server.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await client.send_all(payload(300_000, 1))  # losses: many events, none read
                await client.send_eof()
            while client.conn.state is not TcpState.CLOSED:  # TIME-WAIT is 0.5 s here
                await trio.sleep(0.1)
            events = [ev async for ev in client.events()]
            assert len(events) == 3
            assert client.events_dropped > 0
            # The newest ones were kept: the last is the move to CLOSED.
            last = events[-1]
            assert isinstance(last, StateChanged) and last.new is TcpState.CLOSED


async def test_serve_listeners_works_unchanged(autojump_clock: trio.abc.Clock) -> None:
    async def echo(stream: trio.abc.Stream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(7)
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(partial(trio.serve_listeners, echo, [listener]))
                assert listeners == [listener]
                for i in range(3):
                    stream = await sa.open_tcp_stream(B, 7)
                    message = payload(50_000, i)
                    got = bytearray()

                    async def rx(stream: TCPStream = stream, got: bytearray = got,
                                 n: int = len(message)) -> None:
                        while len(got) < n:
                            got.extend(await stream.receive_some())

                    async with trio.open_nursery() as inner:
                        inner.start_soon(rx)
                        await stream.send_all(message)
                    assert bytes(got) == message
                    await stream.aclose()
                nursery.cancel_scope.cancel()


async def test_connect_timeout_without_answer(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        async with open_stack(net.attach(A)) as sa:
            started = trio.current_time()
            with pytest.raises(TimeoutError, match="timed out"):
                await sa.open_tcp_stream("198.18.0.77", 80, syn_retries=2)
            assert 6.9 < trio.current_time() - started < 7.1  # 1 + 2 + 4 s of backoff
            assert sa.connections() == []


async def test_stack_exit_closes_connections_and_tasks(autojump_clock: trio.abc.Clock) -> None:
    async with MemoryNetwork(seed=1) as net:
        link_a, link_b = net.attach(A), net.attach(B)
        async with open_stack(link_b) as sb:
            async with open_stack(link_a, close_timeout=1.0) as sa:
                client, server, _ = await _pair(sa, sb)
                await client.send_all(b"bye")
            # The stack closed the stream gracefully: the peer sees data then EOF.
            assert await server.receive_some() == b"bye"
            assert await server.receive_some() == b""
            with pytest.raises(trio.ClosedResourceError):
                sa.connect(B, 80)
