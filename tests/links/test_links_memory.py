"""MemoryNetwork: routing, batching, bounded queues, close semantics, and timed impairments.

Timed tests run under ``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``
fixture), so virtual seconds cost no real time and every arrival time is exact.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from links_helpers import ipv4, number_of, numbered

from tcpstack.links import ImpairmentConfig, Link, MemoryLink, MemoryNetwork

A, B, C = "198.18.0.1", "198.18.0.2", "198.18.0.3"


async def collect(link: Link, count: int, log: list[tuple[float, bytes]]) -> None:
    """Receive until ``count`` packets arrived, logging each with its arrival time."""
    while len(log) < count:
        for packet in await link.receive_batch():
            log.append((trio.current_time(), packet))


async def test_routes_by_destination_in_order() -> None:
    async with MemoryNetwork() as net:
        a, b, c = net.attach(A), net.attach(B), net.attach(C)
        a.send_batch([numbered(A, B, 0), numbered(A, C, 1), numbered(A, B, 2), numbered(A, B, 3)])
        assert [number_of(p) for p in await b.receive_batch()] == [0, 2, 3]
        assert [number_of(p) for p in await c.receive_batch()] == [1]
        assert a.stats.packets_sent == 4
        assert b.stats.packets_received == 3
        assert b.stats.bytes_received == 3 * len(numbered(A, B, 0))
        assert net.stats.delivered == 4
        assert a.queued == 0


async def test_receive_batch_waits_then_returns_up_to_max_packets() -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        got: list[list[bytes]] = []

        async def receiver() -> None:
            got.append(await b.receive_batch(max_packets=3))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # still waiting: nothing sent yet
            a.send_batch(numbered(A, B, i) for i in range(5))
        assert [number_of(p) for p in got[0]] == [0, 1, 2]
        assert [number_of(p) for p in await b.receive_batch(max_packets=10)] == [3, 4]
        with pytest.raises(ValueError, match="max_packets"):
            await b.receive_batch(0)


async def test_unknown_destination_malformed_and_oversize_are_dropped_and_counted() -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A, mtu=576)
        b = net.attach(B, mtu=1500)
        a.send_batch(
            [
                numbered(A, "198.19.9.9", 0),
                b"\x45short",
                b"\x60" + bytes(39),  # an IPv6 header is not IPv4
                numbered(A, B, 1, size=1000),  # larger than the sender's MTU
            ]
        )
        b.send_batch([numbered(B, A, 2, size=1000)])  # fits B's MTU, not A's
        assert net.stats.unroutable == 1
        assert net.stats.malformed == 2
        assert net.stats.oversize == 2
        assert net.stats.delivered == 0
        # Three refused on send, one (from B) refused on arrival at the smaller MTU.
        assert a.stats.packets_dropped == 4 and a.stats.packets_sent == 1
        assert b.stats.packets_sent == 1
        a.send_batch([numbered(A, B, 3)])
        assert [number_of(p) for p in await b.receive_batch()] == [3]


async def test_receive_queue_is_bounded_drop_tail() -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B, queue_packets=4)
        a.send_batch(numbered(A, B, i) for i in range(10))
        assert net.stats.queue_full == 6
        assert b.stats.packets_dropped == 6
        assert [number_of(p) for p in await b.receive_batch()] == [0, 1, 2, 3]


async def test_attach_validates_arguments() -> None:
    async with MemoryNetwork() as net:
        net.attach(A)
        with pytest.raises(ValueError, match="already attached"):
            net.attach(A)
        with pytest.raises(ValueError, match="IPv4"):
            net.attach("not-an-address")
        with pytest.raises(ValueError, match="mtu"):
            net.attach(B, mtu=20)
        assert net.link(A).address == A
        with pytest.raises(KeyError):
            net.link(B)


async def test_close_wakes_receivers_detaches_and_frees_the_address() -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        raised: list[type[BaseException]] = []

        async def receiver() -> None:
            try:
                await b.receive_batch()
            except trio.ClosedResourceError as exc:
                raised.append(type(exc))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            await b.aclose()
        assert raised == [trio.ClosedResourceError]
        assert b.closed
        with pytest.raises(trio.ClosedResourceError):
            await b.receive_batch()
        with pytest.raises(trio.ClosedResourceError):
            b.send_batch([numbered(B, A, 0)])
        a.send_batch([numbered(A, B, 1)])
        assert net.stats.unroutable == 1
        b2 = net.attach(B)
        a.send_batch([numbered(A, B, 2)])
        assert [number_of(p) for p in await b2.receive_batch()] == [2]


def count_tasks() -> int:
    def walk(task: trio.lowlevel.Task) -> int:
        return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return walk(root)


async def test_network_exit_closes_links_and_leaves_no_task() -> None:
    before = count_tasks()
    async with MemoryNetwork() as net:
        a = net.attach(A)
        assert count_tasks() == before + 1  # the delivery task
    assert count_tasks() == before
    assert a.closed
    assert net.links == []


async def test_body_exception_propagates_unwrapped() -> None:
    with pytest.raises(KeyError, match="boom"):
        async with MemoryNetwork():
            raise KeyError("boom")


async def test_timed_port_needs_the_delivery_task() -> None:
    net = MemoryNetwork()
    net.attach(A, impairment=ImpairmentConfig(loss=0.5))  # untimed: fine without a task
    with pytest.raises(RuntimeError, match="async with"):
        net.attach(B, impairment=ImpairmentConfig(delay=0.01))


async def test_delay_is_exact_in_virtual_time(autojump_clock: trio.testing.MockClock) -> None:
    delay = 0.0371
    async with MemoryNetwork(seed=3) as net:
        a = net.attach(A, impairment=ImpairmentConfig(delay=delay))
        b = net.attach(B)
        sent: list[float] = []
        log: list[tuple[float, bytes]] = []

        async def sender() -> None:
            for i, gap in enumerate([0.0, 0.013, 0.0001, 0.5, 1.7, 0.02]):
                await trio.sleep(gap)
                sent.append(trio.current_time())
                a.send_batch([numbered(A, B, i)])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(collect, b, 6, log)
        assert [number_of(p) for _, p in log] == list(range(6))
        assert [t for t, _ in log] == [s + delay for s in sent]


async def test_ingress_delay_applies_at_the_receiver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A, impairment=ImpairmentConfig(delay=0.25))
        b = net.attach(B, ingress=ImpairmentConfig(delay=0.5))
        a.send_batch([numbered(A, B, 0)])
        await b.receive_batch()
        assert trio.current_time() == 0.75
        assert b.ingress_stats is not None and b.ingress_stats.passed == 1


async def test_jitter_keeps_order_in_the_network(autojump_clock: trio.testing.MockClock) -> None:
    n, spacing, delay, jitter = 1000, 0.001, 0.05, 0.03
    async with MemoryNetwork(seed=5) as net:
        a = net.attach(A, impairment=ImpairmentConfig(delay=delay, jitter=jitter))
        b = net.attach(B)
        log: list[tuple[float, bytes]] = []

        async def sender() -> None:
            for i in range(n):
                a.send_batch([numbered(A, B, i)])
                await trio.sleep(spacing)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(collect, b, n, log)
    assert [number_of(p) for _, p in log] == list(range(n))
    transits = [t - number_of(p) * spacing for t, p in log]
    assert max(transits) - min(transits) > jitter


async def test_reordering_in_the_network(autojump_clock: trio.testing.MockClock) -> None:
    n, p = 2000, 0.05
    config = ImpairmentConfig(delay=0.01, reorder=p, reorder_delay=0.004)
    async with MemoryNetwork(seed=9) as net:
        a = net.attach(A, impairment=config)
        b = net.attach(B)
        log: list[tuple[float, bytes]] = []

        async def sender() -> None:
            for i in range(n):
                a.send_batch([numbered(A, B, i)])
                await trio.sleep(0.001)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(collect, b, n, log)
    order = [number_of(pkt) for _, pkt in log]
    assert sorted(order) == list(range(n))
    # A packet is out of order if a higher-numbered one arrived before it.
    highest, late = -1, 0
    for k in order:
        late += k < highest
        highest = max(highest, k)
    assert a.egress_stats is not None
    assert late == a.egress_stats.reordered
    assert abs(late - n * p) <= 4 * math.sqrt(n * p * (1 - p))


async def test_rate_limit_within_two_percent(autojump_clock: trio.testing.MockClock) -> None:
    rate, size, queue_bytes, seconds = 2e6, 1250, 25_000, 10.0
    tx_time = size * 8 / rate
    offered_interval = tx_time / 1.5  # offered load 1.5x the rate
    config = ImpairmentConfig(rate=rate, queue_bytes=queue_bytes, delay=0.02)
    async with MemoryNetwork(seed=2) as net:
        a = net.attach(A, impairment=config)
        b = net.attach(B, queue_packets=100_000)
        received: list[tuple[float, bytes]] = []
        offered = int(seconds / offered_interval)

        async def sender() -> None:
            for i in range(offered):
                await trio.sleep_until(i * offered_interval)
                a.send_batch([numbered(A, B, i, size=size)])

        async def receiver() -> None:
            while True:
                for packet in await b.receive_batch():
                    received.append((trio.current_time(), packet))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            nursery.start_soon(receiver)
            await trio.sleep_until(seconds + 1.0)
            nursery.cancel_scope.cancel()
    stats = a.egress_stats
    assert stats is not None
    in_window = [t for t, _ in received if t <= seconds]
    throughput = len(in_window) * size * 8 / seconds
    assert abs(throughput - rate) <= 0.02 * rate
    # Excess offered load was dropped at the bottleneck, and nothing else was lost.
    assert stats.dropped_queue > 0.25 * offered
    assert stats.dropped_queue + len(received) == offered
    # A standing queue builds: late packets wait about queue_bytes*8/rate behind the others.
    transit = [t - number_of(p) * offered_interval for t, p in received]
    full_queue_wait = queue_bytes * 8 / rate
    assert max(transit) <= full_queue_wait + tx_time + 0.02 + 1e-9
    assert max(transit) >= 0.9 * full_queue_wait


async def test_link_down_drops_everything_and_up_restores() -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        b.set_down(True)
        a.send_batch([numbered(A, B, 0)])
        b.send_batch([numbered(B, A, 1)])
        assert net.stats.link_down == 2
        assert net.stats.delivered == 0
        b.set_down(False)
        a.send_batch([numbered(A, B, 2)])
        b.send_batch([numbered(B, A, 3)])
        assert [number_of(p) for p in await b.receive_batch()] == [2]
        assert [number_of(p) for p in await a.receive_batch()] == [3]


async def test_impairment_down_on_a_path(autojump_clock: trio.testing.MockClock) -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A, impairment=ImpairmentConfig(delay=0.01, down=True))
        b = net.attach(B)
        a.send_batch(numbered(A, B, i) for i in range(5))
        assert a.egress is not None
        a.egress.set_down(False)
        a.send_batch([numbered(A, B, 5)])
        assert [number_of(p) for p in await b.receive_batch()] == [5]
        assert a.egress_stats is not None and a.egress_stats.dropped_down == 5


async def test_checksum_offload_off_while_a_port_corrupts() -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        assert a.checksum_offload and b.checksum_offload
        c = net.attach(C, impairment=ImpairmentConfig(corrupt=0.01))
        assert not a.checksum_offload and not b.checksum_offload and not c.checksum_offload
        await c.aclose()
        assert a.checksum_offload


async def test_corruption_on_the_path_flips_one_bit() -> None:
    async with MemoryNetwork(seed=4) as net:
        a = net.attach(A, impairment=ImpairmentConfig(corrupt=1.0))
        b = net.attach(B)
        # Corruption may hit the destination address and misroute; send enough to see some.
        originals = [numbered(A, B, i, size=1200) for i in range(50)]
        a.send_batch(originals)
        got = await b.receive_batch(max_packets=100)
        assert net.stats.delivered + net.stats.unroutable == 50
        assert len(got) == net.stats.delivered > 40
        for packet in got:
            diffs = [
                (int.from_bytes(packet, "big") ^ int.from_bytes(o, "big")).bit_count()
                for o in originals
            ]
            assert min(diffs) == 1


async def test_same_seed_replays_the_same_losses() -> None:
    async def delivered(seed: int) -> list[int]:
        async with MemoryNetwork(seed=seed) as net:
            a = net.attach(A, impairment=ImpairmentConfig(loss=0.3))
            b = net.attach(B, queue_packets=1000)
            a.send_batch(numbered(A, B, i) for i in range(200))
            return [number_of(p) for p in await b.receive_batch(1000)]

    first = await delivered(11)
    assert first == await delivered(11)
    assert first != await delivered(12)
    assert 100 < len(first) < 180


async def test_delay_under_the_real_clock() -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A, impairment=ImpairmentConfig(delay=0.02))
        b = net.attach(B)
        start = trio.current_time()
        a.send_batch([ipv4(A, B, b"hello")])
        with trio.fail_after(2):
            [packet] = await b.receive_batch()
        assert packet.endswith(b"hello")
        assert trio.current_time() - start >= 0.02


def test_memory_link_is_a_link() -> None:
    assert issubclass(MemoryLink, Link)


async def test_every_arrival_reaches_a_receiver_that_parks_again() -> None:
    # The queue wakes its receiver only on the packet that makes it non-empty: packets sent
    # while that receiver is runnable join the same batch, and after it drained the queue and
    # parked again the next packet wakes it once more.
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        batches: list[list[int]] = []

        async def receiver() -> None:
            while sum(map(len, batches)) < 6:
                batches.append([number_of(p) for p in await b.receive_batch()])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receiver)
            await trio.testing.wait_all_tasks_blocked()
            a.send_batch([numbered(A, B, 0)])
            a.send_batch([numbered(A, B, 1), numbered(A, B, 2)])  # before the receiver ran
            await trio.testing.wait_all_tasks_blocked()
            assert batches == [[0, 1, 2]]
            a.send_batch([numbered(A, B, 3)])
            await trio.testing.wait_all_tasks_blocked()
            a.send_batch([numbered(A, B, 4), numbered(A, B, 5)])
        assert batches == [[0, 1, 2], [3], [4, 5]]
        assert net.stats.delivered == 6 and b.stats.packets_received == 6


async def test_bytearray_packets_are_copied_on_send() -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        packet = bytearray(numbered(A, B, 7))
        a.send_batch([packet])  # type: ignore[list-item]  # what a careless caller passes
        packet[20:24] = b"\0\0\0\0"  # the sender reuses its buffer at once
        [got] = await b.receive_batch()
        assert type(got) is bytes and number_of(got) == 7
