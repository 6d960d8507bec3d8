"""tcpstack.waiters: a blocked task wakes when its condition holds, not on every change."""

from __future__ import annotations

import trio
import trio.testing

from tcpstack import open_stack
from tcpstack.links import ImpairmentConfig, MemoryNetwork
from tcpstack.waiters import Waiters


async def test_a_waiter_wakes_only_once_its_condition_holds() -> None:
    waiters = Waiters()
    level = [0]  # what the second waiter waits for: level[0] >= 3
    woke: list[str] = []

    async def wait(name: str, ready: object) -> None:
        await waiters.wait(ready)  # type: ignore[arg-type]
        woke.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "any", None)
        nursery.start_soon(wait, "three", lambda: level[0] >= 3)
        await trio.testing.wait_all_tasks_blocked()
        assert len(waiters) == 2
        for level[0] in (1, 2):
            waiters.wake()
            await trio.testing.wait_all_tasks_blocked()
            assert woke == ["any"]  # woken by the first change; "three" keeps waiting
        level[0] = 3
        waiters.wake()
    assert woke == ["any", "three"] and not waiters


async def test_everyone_wakes_whatever_their_condition_and_cancelled_waiters_leave() -> None:
    waiters = Waiters()
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(waiters.wait, lambda: False)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01):
            await waiters.wait(lambda: False)
        assert len(waiters) == 3  # the cancelled one is gone
        waiters.wake(everyone=True)
    assert not waiters


class _Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def test_a_blocked_sender_wakes_a_few_times_per_window_not_per_ack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # 2 MB through a 64 kB send buffer, one MSS per segment: hundreds of ACKs free space; Linux's rule (wake when the free
    # space is at least half what is queued) wakes the sender a few times per buffer's worth.
    size, buffer = 2_000_000, 65_536
    steps = _Steps()
    async with MemoryNetwork(seed=1) as net:
        path = ImpairmentConfig(delay=0.005, rate=20e6)  # each packet at its own time
        a = net.attach("198.18.0.1", impairment=path)
        b = net.attach("198.18.0.2", impairment=path)
        # Every segment acknowledged at once (TCP_QUICKACK), one MSS per segment (no TSO).
        async with (
            open_stack(a, send_buffer=buffer, tso=False) as sa,
            open_stack(b, quickack=True) as sb,
        ):
            listener = await sb.open_tcp_listener(80)
            client = await sa.open_tcp_stream("198.18.0.2", 80)
            server = await listener.accept()

            async def send() -> None:
                steps.task = trio.lowlevel.current_task()
                await client.send_all(bytes(size))

            trio.lowlevel.add_instrument(steps)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(send)
                    received = 0
                    while received < size:
                        received += len(await server.receive_some())
            finally:
                trio.lowlevel.remove_instrument(steps)
            acks = sb.stats.packets_out
    assert received == size
    assert acks > 500
    # At most ~3 wake-ups per buffer's worth of data, plus start-up.
    assert steps.steps <= 3 * size // buffer + 10, (steps.steps, acks)
