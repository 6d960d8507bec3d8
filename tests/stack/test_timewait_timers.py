"""The stack's deadline heap around TIME-WAIT and forgotten connections (tcpstack.stack)."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
from stack_helpers import A, B

from tcpstack import open_stack
from tcpstack.links import MemoryNetwork
from tcpstack.tcp import Connection
from tcpstack.tcp.state import TcpState


async def test_time_wait_is_not_woken_before_its_2msl(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The RTO deadline the handshake left is not a wake-up of a TIME-WAIT connection: the only
    timer call it gets is the 2 MSL expiry, which closes it and removes it from the stack."""
    fired: list[tuple[TcpState, float]] = []
    original = Connection.on_timer

    def on_timer(self: Connection, now: float) -> None:
        fired.append((self.state, now))
        original(self, now)

    monkeypatch.setattr(Connection, "on_timer", on_timer)
    async with MemoryNetwork(seed=3) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(80)

            async def serve() -> None:
                stream = await listener.accept()
                assert await stream.receive_some() == b""  # the client's FIN
                await stream.aclose()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                client = await sa.open_tcp_stream(B, 80)
                conn = client.conn
                await client.aclose()  # active close: the client ends in TIME-WAIT
            with trio.fail_after(5):
                while conn.state is not TcpState.TIME_WAIT:
                    await trio.sleep(0.001)
            entered = trio.current_time()
            time_wait = conn.opts.time_wait
            assert time_wait > 2
            fired.clear()
            await trio.sleep(time_wait - 1)
            assert fired == []
            assert [row.state for row in sa.connections()] == [TcpState.TIME_WAIT]
            await trio.sleep(2)
            assert conn.state is TcpState.CLOSED
            assert [state for state, _ in fired] == [TcpState.TIME_WAIT]
            assert fired[0][1] == pytest.approx(entered + time_wait, abs=0.01)
            assert sa.connections() == []


async def test_a_forgotten_connection_is_freed_at_once(autojump_clock: trio.abc.Clock) -> None:
    """The deadline heap holds ids, not connections: a connection the stack forgot (aborted
    while its RTO was armed) is freed by reference counting before that deadline comes due."""
    async with MemoryNetwork(seed=4) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(80)
            streams: list[object] = []
            async with trio.open_nursery() as nursery:

                async def accept() -> None:
                    streams.append(await listener.accept())

                nursery.start_soon(accept)
                client = await sa.open_tcp_stream(B, 80)
            conn = client.conn
            conn.send(b"x" * 1000)
            sa.touch(conn)  # the data leaves, the RTO is armed
            assert conn.conn_id in sa._scheduled
            conn_id = conn.conn_id
            ref = weakref.ref(conn)
            conn.abort()  # RST: CLOSED, the stack forgets it; its heap entry stays
            sa.touch(conn)
            assert conn.state is TcpState.CLOSED and conn.conn_id not in sa._scheduled
            assert any(entry_id == conn.conn_id for _, entry_id in sa._deadlines)
            del client, conn
            gc.disable()
            try:
                assert ref() is None  # reference counting alone freed it
            finally:
                gc.enable()
            last = max(d for d, entry_id in sa._deadlines if entry_id == conn_id)
            await trio.sleep(last - trio.current_time() + 0.1)
            assert all(entry_id != conn_id for _, entry_id in sa._deadlines)  # due and skipped
            assert sa.stats.internal_errors == sb.stats.internal_errors == 0


async def test_an_idle_established_connection_never_wakes_the_timer_task(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once established with no data, keep-alive or delayed ACK, a connection runs no timer: the
    RTO deadline its SYN left in the heap is stale, and neither calls on_timer nor wakes the
    stack's timer task when it comes due (each such wake was a task step and a flush per
    connection, a second after its SYN)."""
    fired: list[Connection] = []
    original = Connection.on_timer

    def on_timer(self: Connection, now: float) -> None:
        fired.append(self)
        original(self, now)

    monkeypatch.setattr(Connection, "on_timer", on_timer)
    steps: list[str] = []

    class TimerSteps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            if task.name.endswith("_timer_loop"):
                steps.append(task.name)

    async with MemoryNetwork(seed=4) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(80)
            kept = []
            for _ in range(20):
                kept.append(await sa.open_tcp_stream(B, 80))
                kept.append(await listener.accept())
                await trio.sleep(0.05)  # a different RTO deadline for each SYN
            assert all(s.conn.state is TcpState.ESTABLISHED for s in kept)
            assert all(s.conn.next_deadline() is None for s in kept)
            assert sa._scheduled == {} and sb._scheduled == {}
            # Nobody waits on them any more (each connect waited once): no waiter lots kept.
            assert sa._waiters == {} and sb._waiters == {}
            trio.lowlevel.add_instrument(TimerSteps())
            await trio.sleep(10)  # well past every SYN's 1 s RTO
            assert fired == []
            # The timer task still sleeps until the first SYN's deadline, set when it was live;
            # that one wake drops every stale entry, instead of one wake per connection.
            assert len(steps) <= 1
            assert sa._deadlines == [] and sb._deadlines == []
            for stream in kept:
                await stream.aclose()


async def test_the_deadline_heap_stays_within_twice_the_timers(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Deadlines that move earlier leave their old entries behind; the heap is rebuilt from the
    live ones before the stale ones outnumber them by more than the slack."""
    from tcpstack import stack as stack_module

    async with MemoryNetwork(seed=5) as net:
        async with open_stack(net.attach(A)) as sa, open_stack(net.attach(B)) as sb:
            listener = await sb.open_tcp_listener(80)
            client = await sa.open_tcp_stream(B, 80)
            server = await listener.accept()
            conn = client.conn
            bound = 2 * 1 + stack_module._HEAP_SLACK
            for i in range(3 * stack_module._HEAP_SLACK):
                sa._file(conn, 1000.0 - i * 0.001)  # each earlier than the last
                assert len(sa._deadlines) <= bound
            last = 1000.0 - (3 * stack_module._HEAP_SLACK - 1) * 0.001
            assert sa._earliest() == pytest.approx(last)
            del sa._scheduled[conn.conn_id]
            assert sa._earliest() == float("inf")
            await client.aclose()
            await server.aclose()
