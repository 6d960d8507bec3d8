"""Middleware around links: the pass-through base, Impairment, and PcapTap."""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import dpkt
import pytest
import trio
import trio.testing
from links_helpers import number_of, numbered

from tcpstack.links import (
    LINKTYPE_RAW,
    Impairment,
    ImpairmentConfig,
    Link,
    LinkStats,
    MemoryNetwork,
    Middleware,
    PcapTap,
)

A, B = "198.18.0.1", "198.18.0.2"


class Recorder(Middleware):
    """A minimal middleware: counts what passes each way and changes nothing."""

    def __init__(self, inner: Link) -> None:
        super().__init__(inner)
        self.seen: list[str] = []

    def send_batch(self, packets: Iterable[bytes]) -> None:
        batch = list(packets)
        self.seen += ["tx"] * len(batch)
        super().send_batch(batch)

    async def receive_batch(self, max_packets: int = 64) -> list[bytes]:
        batch = await super().receive_batch(max_packets)
        self.seen += ["rx"] * len(batch)
        return batch


async def test_middleware_passes_through_and_composes() -> None:
    async with MemoryNetwork() as net:
        inner_a = net.attach(A, mtu=1400)
        a = Recorder(Recorder(inner_a))
        b = net.attach(B)
        assert (a.address, a.mtu, a.checksum_offload) == (A, 1400, True)
        assert a.stats is inner_a.stats
        a.send_batch([numbered(A, B, 0)])
        b.send_batch([numbered(B, A, 1)])
        assert [number_of(p) for p in await a.receive_batch()] == [1]
        assert a.seen == ["tx", "rx"]
        assert isinstance(a.inner, Recorder) and a.inner.seen == ["tx", "rx"]
        a.set_down(True)
        assert inner_a.down
        await a.aclose()
        assert inner_a.closed and a.closed
    with pytest.raises(TypeError, match="wraps a Link"):
        Middleware(object())  # type: ignore[arg-type]


def test_link_is_abstract_and_set_down_is_optional() -> None:
    with pytest.raises(TypeError):
        Link()  # type: ignore[abstract]

    class Wire(Link):
        stats = LinkStats()
        address = A
        mtu = 1500
        checksum_offload = False
        closed = False

        async def receive_batch(self, max_packets: int = 64) -> list[bytes]:
            raise NotImplementedError

        def send_batch(self, packets: Iterable[bytes]) -> None:
            raise NotImplementedError

        async def aclose(self) -> None:
            pass

    with pytest.raises(NotImplementedError, match="cannot emulate"):
        Wire().set_down(True)


async def test_impairment_tx_delay_is_exact(autojump_clock: trio.testing.MockClock) -> None:
    async with MemoryNetwork() as net:
        b = net.attach(B)
        async with Impairment(net.attach(A), tx=ImpairmentConfig(delay=0.3), seed=1) as a:
            await trio.sleep(1.1)
            a.send_batch([numbered(A, B, 0), numbered(A, B, 1)])
            batch = await b.receive_batch()
            assert trio.current_time() == 1.1 + 0.3
            assert [number_of(p) for p in batch] == [0, 1]
            assert a.tx_stats.passed == 2


async def test_impairment_rx_loss_without_entering() -> None:
    n, p = 4000, 0.2
    async with MemoryNetwork() as net:
        a = net.attach(A)
        b = Impairment(net.attach(B, queue_packets=n), rx=ImpairmentConfig(loss=p), seed=3)
        a.send_batch(numbered(A, B, i) for i in range(n))
        received: list[int] = []
        while len(received) + b.rx_stats.dropped_loss < n:
            received += [number_of(x) for x in await b.receive_batch()]
        assert received == sorted(received)
        assert abs(b.rx_stats.dropped_loss - n * p) <= 4 * math.sqrt(n * p * (1 - p))
        assert a.stats.packets_sent == n


async def test_impairment_rx_delay_runs_a_reader_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with MemoryNetwork() as net:
        a = net.attach(A)
        async with Impairment(net.attach(B), rx=ImpairmentConfig(delay=0.75)) as b:
            a.send_batch([numbered(A, B, 7)])
            [packet] = await b.receive_batch()
            assert number_of(packet) == 7
            assert trio.current_time() == 0.75
        assert b.closed


async def test_impairment_timed_needs_entering() -> None:
    async with MemoryNetwork() as net:
        a = Impairment(net.attach(A), tx=ImpairmentConfig(delay=0.1))
        with pytest.raises(RuntimeError, match="async with"):
            a.send_batch([numbered(A, B, 0)])
        b = Impairment(net.attach(B), rx=ImpairmentConfig(rate=1e6))
        with pytest.raises(RuntimeError, match="async with"):
            await b.receive_batch()


async def test_impairment_set_down_both_directions_then_up() -> None:
    async with MemoryNetwork() as net:
        b = net.attach(B)
        async with Impairment(net.attach(A)) as a:
            a.set_down(True)
            a.send_batch([numbered(A, B, 0)])
            b.send_batch([numbered(B, A, 1)])
            await trio.testing.wait_all_tasks_blocked()  # the outage lasts until packet 1 is in
            a.set_down(False)
            a.send_batch([numbered(A, B, 2)])
            b.send_batch([numbered(B, A, 3)])
            assert [number_of(p) for p in await b.receive_batch()] == [2]
            assert [number_of(p) for p in await a.receive_batch()] == [3]
            assert a.tx_stats.dropped_down == 1 and a.rx_stats.dropped_down == 1


async def test_impairment_corruption_turns_checksum_offload_off() -> None:
    async with MemoryNetwork() as net:
        assert Impairment(net.attach(A), tx=ImpairmentConfig(loss=0.1)).checksum_offload
        assert not Impairment(net.attach(B), rx=ImpairmentConfig(corrupt=0.1)).checksum_offload


def tcp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes, seq: int) -> bytes:
    tcp = dpkt.tcp.TCP(
        sport=sport, dport=dport, seq=seq, flags=dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH, data=payload
    )
    ip = dpkt.ip.IP(
        src=bytes(map(int, src.split("."))),
        dst=bytes(map(int, dst.split("."))),
        p=dpkt.ip.IP_PROTO_TCP,
        ttl=64,
        data=tcp,
    )
    ip.len = len(ip)  # dpkt fills the checksums when packed
    return bytes(ip)


async def test_pcap_tap_records_both_directions(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    path = tmp_path / "tap.pcap"
    epoch = 1_700_000_000.0
    sent = [tcp_packet(A, B, 40000 + i, 80, b"x" * (10 * i), seq=i) for i in range(5)]
    replies = [tcp_packet(B, A, 80, 40000 + i, b"ok", seq=100 + i) for i in range(3)]
    async with MemoryNetwork() as net:
        b = net.attach(B)
        async with PcapTap(net.attach(A), path, epoch=epoch) as a:
            await trio.sleep(2.5)
            a.send_batch(iter(sent))  # any iterable, even a one-shot one
            assert len(await b.receive_batch()) == 5
            await trio.sleep(0.25)
            b.send_batch(replies)
            assert await a.receive_batch() == replies
            assert a.packets_written == 8
        assert not a.capturing and a.closed

    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == LINKTYPE_RAW == 101
        records = list(reader)
    assert [pkt for _, pkt in records] == sent + replies
    assert [ts for ts, _ in records] == pytest.approx([epoch + 2.5] * 5 + [epoch + 2.75] * 3)

    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed; the pcap was verified with dpkt only")
    out = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-e", "tcp.srcport"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    assert out == [str(40000 + i) for i in range(5)] + ["80"] * 3


async def test_pcap_tap_flush_makes_records_readable_while_running(tmp_path: Path) -> None:
    path = tmp_path / "live.pcap"
    async with MemoryNetwork() as net:
        net.attach(B)
        async with PcapTap(net.attach(A), path) as a:
            a.send_batch([numbered(A, B, 0)])
            a.flush()
            with path.open("rb") as f:
                assert [pkt for _, pkt in dpkt.pcap.Reader(f)] == [numbered(A, B, 0)]
