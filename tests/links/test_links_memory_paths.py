"""MemoryNetwork directional path impairments: set_path / set_path_down between two addresses.

Timed tests run under ``MockClock(autojump_threshold=0)`` (pytest-trio's ``autojump_clock``
fixture), so every arrival time is exact.
"""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from links_helpers import number_of, numbered

from tcpstack.links import ImpairmentConfig, Link, MemoryNetwork

A, B, C = "198.18.0.1", "198.18.0.2", "198.18.0.3"


async def collect(link: Link, count: int, log: list[tuple[float, bytes]]) -> None:
    while len(log) < count:
        for packet in await link.receive_batch():
            log.append((trio.current_time(), packet))


async def test_path_delay_is_one_directional_and_sits_between_egress_and_ingress(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A, impairment=ImpairmentConfig(delay=0.001))
        b = net.attach(B, ingress=ImpairmentConfig(delay=0.0001))
        net.set_path(A, B, ImpairmentConfig(delay=0.010))
        start = trio.current_time()
        a.send_batch([numbered(A, B, 0)])
        b.send_batch([numbered(B, A, 1)])
        at_b: list[tuple[float, bytes]] = []
        at_a: list[tuple[float, bytes]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, b, 1, at_b)
            nursery.start_soon(collect, a, 1, at_a)
        # A->B crosses A's egress (1 ms), the path (10 ms) and B's ingress (0.1 ms)...
        assert at_b[0][0] - start == pytest.approx(0.0111)
        # ...while B->A has no path config and no port delay: it arrives at once.
        assert at_a[0][0] == start
        assert net.path(A, B) == ImpairmentConfig(delay=0.010)
        assert net.path(B, A) is None


async def test_path_loss_is_seeded_counted_and_leaves_other_pairs_alone() -> None:
    async def run(seed: int) -> tuple[list[int], list[int]]:
        async with MemoryNetwork(seed=seed) as net:
            a, b, c = net.attach(A), net.attach(B, queue_packets=4096), net.attach(C)
            net.set_path(A, B, ImpairmentConfig(loss=0.3))
            a.send_batch(numbered(A, B, i) for i in range(2000))
            a.send_batch(numbered(A, C, i) for i in range(200))
            to_b = [number_of(p) for p in await b.receive_batch(4096)]
            to_c = [number_of(p) for p in await c.receive_batch(4096)]
            stats = net.path_stats(A, B)
            assert stats is not None
            assert stats.offered == 2000
            assert stats.dropped_loss == 2000 - len(to_b)
            assert net.path_stats(A, C) is None
            return to_b, to_c

    first, to_c = await run(seed=7)
    assert to_c == list(range(200))  # A->C has no path config: nothing lost
    assert 0.25 < 1 - len(first) / 2000 < 0.35
    assert (await run(seed=7))[0] == first  # same seed, same losses
    assert (await run(seed=8))[0] != first


async def test_path_rate_serialises_packets_at_the_configured_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        size = 1000
        net.set_path(A, B, ImpairmentConfig(rate=8_000_000.0, queue_bytes=100 * size))
        start = trio.current_time()
        a.send_batch(numbered(A, B, i, size) for i in range(10))
        log: list[tuple[float, bytes]] = []
        await collect(b, 10, log)
        # 1000 bytes at 8 Mbit/s take 1 ms each; packet i's last bit leaves at (i+1) ms.
        assert [t - start for t, _ in log] == pytest.approx([(i + 1) * 0.001 for i in range(10)])


async def test_path_down_drops_one_direction_until_restored(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork() as net:
        a, b = net.attach(A), net.attach(B)
        net.set_path(A, B, ImpairmentConfig(delay=0.05))
        a.send_batch([numbered(A, B, 0)])  # in flight on the path when it is cut
        await trio.sleep(0.01)
        net.set_path_down(A, B, True)
        assert net.path_is_down(A, B) and not net.path_is_down(B, A)
        a.send_batch([numbered(A, B, 1)])
        b.send_batch([numbered(B, A, 2)])  # the reverse direction still works
        assert [number_of(p) for p in await a.receive_batch()] == [2]
        log: list[tuple[float, bytes]] = []
        await collect(b, 1, log)
        assert [number_of(p) for _, p in log] == [0]
        assert net.stats.path_down == 1
        assert net.stats.dropped == 1
        net.set_path_down(A, B, False)
        assert net.path(A, B) == ImpairmentConfig(delay=0.05)  # down/up leaves the config alone
        a.send_batch([numbered(A, B, 3)])
        sent = trio.current_time()
        await collect(b, 2, log)
        assert number_of(log[1][1]) == 3
        assert log[1][0] - sent == pytest.approx(0.05)


async def test_path_down_needs_no_config_and_works_for_unattached_addresses() -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A)
        net.set_path_down(A, B, True)
        b = net.attach(B)
        a.send_batch([numbered(A, B, 0)])
        assert net.stats.path_down == 1
        assert b.queued == 0
        net.set_path_down(A, B, False)
        a.send_batch([numbered(A, B, 1)])
        assert [number_of(p) for p in await b.receive_batch()] == [1]


async def test_changing_a_live_path_keeps_fifo_order_and_its_random_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork(seed=3) as net:
        a, b = net.attach(A), net.attach(B)
        net.set_path(A, B, ImpairmentConfig(delay=0.100))
        a.send_batch([numbered(A, B, 0)])
        await trio.sleep(0.010)
        net.set_path(A, B, ImpairmentConfig(delay=0.001))  # delay cut while 0 is in flight
        a.send_batch([numbered(A, B, 1)])
        log: list[tuple[float, bytes]] = []
        await collect(b, 2, log)
        assert [number_of(p) for _, p in log] == [0, 1]  # 1 waits behind 0, never overtakes it
        assert log[0][0] == log[1][0]
        stats = net.path_stats(A, B)
        assert stats is not None and stats.offered == 2  # same model, counters carried over

    # The loss draws continue one stream across a config change: changing delay in the middle
    # gives the same losses as never changing it.
    async def losses(change: bool) -> list[int]:
        async with MemoryNetwork(seed=11) as net:
            a, b = net.attach(A), net.attach(B)
            net.set_path(A, B, ImpairmentConfig(loss=0.2))
            a.send_batch(numbered(A, B, i) for i in range(300))
            if change:
                net.set_path(A, B, ImpairmentConfig(loss=0.2, duplicate=0.0))
            a.send_batch(numbered(A, B, i) for i in range(300, 600))
            return [number_of(p) for p in await b.receive_batch(1024)]

    assert await losses(True) == await losses(False)


async def test_raising_loss_on_a_live_path_takes_effect_at_once() -> None:
    async with MemoryNetwork(seed=5) as net:
        a, b = net.attach(A), net.attach(B)
        net.set_path(A, B, ImpairmentConfig())
        a.send_batch(numbered(A, B, i) for i in range(500))
        assert len(await b.receive_batch(1024)) == 500
        net.set_path(A, B, ImpairmentConfig(loss=0.5))
        a.send_batch(numbered(A, B, i) for i in range(1000))
        received = len(await b.receive_batch(2048))
        assert 400 < received < 600
        net.set_path(A, B, None)
        assert net.path(A, B) is None
        a.send_batch(numbered(A, B, i) for i in range(100))
        assert len(await b.receive_batch(1024)) == 100


async def test_corrupting_path_turns_checksum_offload_off_and_clearing_turns_it_on() -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A)
        assert a.checksum_offload
        net.set_path(A, B, ImpairmentConfig(corrupt=0.1))
        assert net.corrupting and not a.checksum_offload
        net.set_path(A, B, ImpairmentConfig(corrupt=0.2))  # replacing counts once, not twice
        net.set_path(A, B, ImpairmentConfig())
        assert not net.corrupting and a.checksum_offload
        net.set_path(A, B, ImpairmentConfig(corrupt=0.1))
        net.set_path(A, B, None)
        assert not net.corrupting


async def test_bad_addresses_and_timed_paths_outside_the_network_are_clear_errors() -> None:
    net = MemoryNetwork()
    with pytest.raises(ValueError, match="not an IPv4 address: 'nowhere'"):
        net.set_path("nowhere", B, ImpairmentConfig(loss=0.1))
    with pytest.raises(ValueError, match="not an IPv4 address"):
        net.set_path_down(A, "1.2.3", True)
    with pytest.raises(RuntimeError, match="delivery task"):
        net.set_path(A, B, ImpairmentConfig(delay=0.01))
    net.set_path(A, B, ImpairmentConfig(loss=0.1))  # untimed: fine without the task
    assert net.path(A, B) is not None
    assert math.isclose(net.path(A, B).loss, 0.1)  # type: ignore[union-attr]


async def test_paths_only_makes_pairs_without_a_path_unroutable() -> None:
    async with MemoryNetwork() as net:
        a, b, c = net.attach(A), net.attach(B), net.attach(C)
        net.paths_only = True
        net.set_path(A, B, ImpairmentConfig())
        a.send_batch([numbered(A, B, 0), numbered(A, C, 1)])
        b.send_batch([numbered(B, A, 2)])  # only A->B has a path, not B->A
        assert [number_of(p) for p in await b.receive_batch()] == [0]
        assert c.queued == 0 and a.queued == 0
        assert net.stats.unroutable == 2
        net.paths_only = False
        b.send_batch([numbered(B, A, 3)])
        assert [number_of(p) for p in await a.receive_batch()] == [3]
